//! Certificates made by the test for TLS tests: a CA, a broker certificate for
//! `localhost`, a client certificate, and the wrong ones (another CA, an expired broker
//! certificate), as PEM files in a directory the `rabbitmq` user can read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The files of a test PKI, removed when dropped.
pub struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    /// Makes every file (a fraction of a second).
    pub fn new() -> TestPki {
        let dir = std::env::temp_dir().join(format!(
            "wn-pki-{}-{:04x}",
            std::process::id(),
            fastrand::u16(..)
        ));
        std::fs::create_dir(&dir).expect("the PKI directory, new");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let pki = TestPki { dir };

        let (ca, ca_key) = pki.ca("ca", "webhook-normalizer test CA");
        pki.ca("other-ca", "another CA");
        let broker = leaf(
            "localhost",
            &["localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        pki.sign("broker", broker, &ca, &ca_key);
        let mut expired = leaf(
            "localhost",
            &["localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        expired.not_before = rcgen::date_time_ymd(2020, 1, 1);
        expired.not_after = rcgen::date_time_ymd(2020, 1, 2);
        pki.sign("expired-broker", expired, &ca, &ca_key);
        let client = leaf(CLIENT_NAME, &[], ExtendedKeyUsagePurpose::ClientAuth);
        pki.sign("client", client, &ca, &ca_key);
        pki
    }

    /// `{name}.pem` (certificate) in the directory.
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// `{name}.key` (its private key, PKCS#8) in the directory.
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    fn ca(&self, name: &str, common_name: &str) -> (CertificateParams, KeyPair) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        write(&self.cert(name), &cert.pem());
        write(&self.key(name), &key.serialize_pem());
        (params, key)
    }

    fn sign(
        &self,
        name: &str,
        params: CertificateParams,
        ca: &CertificateParams,
        ca_key: &KeyPair,
    ) {
        let key = KeyPair::generate().unwrap();
        let cert = params
            .signed_by(&key, &Issuer::from_params(ca, ca_key))
            .unwrap();
        write(&self.cert(name), &cert.pem());
        write(&self.key(name), &key.serialize_pem());
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The client certificate's common name: the user name with `EXTERNAL`.
pub const CLIENT_NAME: &str = "normalizer-client";

fn leaf(common_name: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params
}

fn write(path: &Path, pem: &str) {
    std::fs::write(path, pem).expect("a PEM file");
    // The broker runs as the `rabbitmq` user.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}
