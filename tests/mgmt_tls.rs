//! The management API over TLS (rustls): a client trusting the service's certificate gets
//! the same service; plain HTTP on the TLS port and an untrusted certificate get nothing; a
//! key file readable by others is refused at start-up.

mod mgmt_common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use pcietun::mgmt::auth::hash_password;
use pcietun::mgmt::client::{Client, Settings};
use pcietun::mgmt::fake::FakePool;
use pcietun::mgmt::redfish::{Service, ServiceOptions};
use pcietun::mgmt::{Server, ServerError, TlsFiles};

fn service() -> Arc<Service> {
    let opts = ServiceOptions::new("admin", hash_password("admin-password-1").unwrap());
    Arc::new(Service::new(Arc::new(FakePool::sample()), opts).unwrap())
}

fn write(dir: &std::path::Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

#[test]
fn tls_serves_the_api_to_a_client_that_trusts_it() {
    let d = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = write(d.path(), "cert.pem", &ck.cert.pem(), 0o644);
    let key = write(d.path(), "key.pem", &ck.key_pair.serialize_pem(), 0o600);
    let files = TlsFiles {
        cert: cert.clone(),
        key,
    };
    let server =
        Server::start_service(service(), "127.0.0.1:0".parse().unwrap(), Some(&files)).unwrap();
    assert!(server.url().starts_with("https://"));

    let settings = Settings {
        api: server.url(),
        ca: Some(cert),
        timeout: std::time::Duration::from_secs(5),
        ..Settings::default()
    };
    let client = Client::new(&settings).unwrap();
    let login = client.login("admin", "admin-password-1").unwrap();
    let settings = Settings {
        token: Some(login.token),
        ..settings
    };
    let rows = Client::new(&settings).unwrap().devices().unwrap();
    assert_eq!(rows.len(), 4);

    // Without trusting the certificate: cannot reach (exit 3), nothing sent in the clear.
    let untrusting = Settings {
        ca: None,
        ..settings.clone()
    };
    let e = Client::new(&untrusting).unwrap().devices().unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    // Plain HTTP to the TLS port gets no Redfish answer.
    let plain = Settings {
        api: server.url().replace("https://", "http://"),
        ..settings
    };
    assert!(Client::new(&plain).unwrap().devices().is_err());
    server.shutdown();
}

#[test]
fn a_readable_key_or_a_bad_certificate_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = write(d.path(), "cert.pem", &ck.cert.pem(), 0o644);
    let open_key = write(d.path(), "open.pem", &ck.key_pair.serialize_pem(), 0o644);
    let files = TlsFiles {
        cert: cert.clone(),
        key: open_key,
    };
    let e =
        Server::start_service(service(), "127.0.0.1:0".parse().unwrap(), Some(&files)).unwrap_err();
    assert!(matches!(e, ServerError::Tls { what: "key", .. }), "{e}");
    assert!(e.to_string().contains("chmod 600"));
    let key = write(d.path(), "key.pem", &ck.key_pair.serialize_pem(), 0o600);
    let junk = write(d.path(), "junk.pem", "not a certificate\n", 0o644);
    let files = TlsFiles { cert: junk, key };
    let e =
        Server::start_service(service(), "127.0.0.1:0".parse().unwrap(), Some(&files)).unwrap_err();
    assert!(
        matches!(
            e,
            ServerError::Tls {
                what: "certificate",
                ..
            }
        ),
        "{e}"
    );
}
