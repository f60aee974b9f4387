//! The request line: what a filter knows of an HTTP request before it reads anything else, and what a decision, a
//! redirect's base and a followed hop's record are made of.

/// An HTTP request's pseudo-headers, as Envoy hands them to a filter after its own parsing (HTTP/1 `Host` and an
/// absolute-form or CONNECT target are `:authority` by then).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestLine<'a> {
    /// `:scheme`: `http` or `https`, for the default port.
    pub scheme: &'a str,
    /// `:authority`.
    pub authority: &'a str,
    /// `:method`.
    pub method: &'a str,
    /// `:path`, with query; absent for CONNECT.
    pub path: Option<&'a str>,
}

impl<'a> RequestLine<'a> {
    /// A request with a path (every method but CONNECT).
    pub const fn new(scheme: &'a str, authority: &'a str, method: &'a str, path: &'a str) -> RequestLine<'a> {
        RequestLine { scheme, authority, method, path: Some(path) }
    }

    /// A CONNECT request: a tunnel whose bytes the gateway does not read.
    pub fn is_tunnel(&self) -> bool {
        self.method == "CONNECT"
    }

    /// The path, empty when absent (CONNECT).
    pub fn path_or_empty(&self) -> &'a str {
        self.path.unwrap_or_default()
    }
}
