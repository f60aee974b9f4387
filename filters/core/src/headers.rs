//! HTTP header names as servers read them.

/// Whether a header called `name` is read as `canonical` (lowercase letters, digits and `-`) by some server: CGI,
/// WSGI, PHP and Rack expose headers as `HTTP_X_WORKLOAD_IDENTITY`, upper-casing the name and turning `-` (and, in
/// some servers, every other character that is not a letter or digit) into `_`. So `x_workload_identity`,
/// `X-Workload_Identity` and `x.workload.identity` all alias `x-workload-identity`.
pub fn is_alias(name: &str, canonical: &str) -> bool {
    name.len() == canonical.len()
        && name.bytes().zip(canonical.bytes()).all(|(byte, want)| {
            if byte.is_ascii_alphanumeric() {
                byte.to_ascii_lowercase() == want
            } else {
                want == b'-'
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn aliases_fold_case_and_every_separator() {
        for name in ["x-a-b", "X-A-B", "x_a_b", "X_a-B", "x.a.b", "x~a~b", "x!a#b"] {
            assert!(is_alias(name, "x-a-b"), "{name}");
        }
        for name in ["x-a-bc", "xa-b", "x-a-", "x-ab", "y-a-b"] {
            assert!(!is_alias(name, "x-a-b"), "{name}");
        }
        assert!(!is_alias("x-a", "x_a"), "canonical names hold only `-`");
    }
}
