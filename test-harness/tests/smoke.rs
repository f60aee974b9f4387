use egress_harness::{client, Lab, LabOptions};
#[test]
fn smoke() {
    let lab = Lab::start(&LabOptions::new(r#"{"rules":[{"name":"httpbin","hosts":["httpbin.org","*.httpbin.org"]}]}"#)).unwrap();
    let ok = client::get(lab.http(), "httpbin.org", "/headers").unwrap();
    println!("{} {}", ok.status, ok.body_str());
    let denied = client::get(lab.http(), "example.com", "/headers").unwrap();
    println!("{} {:?} {}", denied.status, denied.headers, denied.body_str());
    println!("{}", lab.envoy.admin_get("/stats?filter=egress").unwrap());
    println!("{:?}", lab.access_log());
}
