//! Certificates for a cluster: one CA, and a certificate per process naming its role, all
//! made with rcgen.
//!
//! Every leaf carries its [`Role`] as a subject-alternative-name URI (see
//! `augur_transport::roles`), which servers check on every request. Metadata members carry the
//! cluster-internal name [`META_SERVER_NAME`] and storage nodes [`STORAGE_SERVER_NAME`] (what
//! their peers verify), plus the hosts they are reachable at; both may act as TLS server and
//! client, since they dial each other. Operator and client certificates can only authenticate
//! clients. Private keys are written with mode 0600.

pub use augur_transport::Role;
use augur_transport::{META_SERVER_NAME, STORAGE_SERVER_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or the CA files.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A name is unusable as a file name or certificate subject.
    #[error("invalid name {0:?}: use letters, digits, '-' and '_'")]
    BadName(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn check_name(name: &str) -> Result<(), CertError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(CertError::BadName(name.to_string()));
    }
    Ok(())
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "augur");
    dn.push(DnType::CommonName, cn);
    dn
}

/// Creates `ca.pem` and `ca.key` in `dir`.
pub fn create_ca(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn("augur cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write(&dir.join("ca.pem"), &cert.pem(), false)?;
    write(&dir.join("ca.key"), &key.serialize_pem(), true)
}

/// Issues `NAME.pem` / `NAME.key` in `out`, signed by the CA in `ca_dir`.
pub fn issue(
    ca_dir: &Path,
    out: &Path,
    name: &str,
    role: Role,
    hosts: &[String],
) -> Result<(PathBuf, PathBuf), CertError> {
    check_name(name)?;
    let ca_pem_path = ca_dir.join("ca.pem");
    let ca_key_path = ca_dir.join("ca.key");
    let ca_pem = std::fs::read_to_string(&ca_pem_path).map_err(io_err(&ca_pem_path))?;
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?)?;
    // Re-create the CA certificate object from its file to sign with; the issuer name and key
    // are what a verifier checks, and both are the CA's.
    let ca = CertificateParams::from_ca_cert_pem(&ca_pem)?.self_signed(&ca_key)?;
    let server = match role {
        Role::Member => Some(META_SERVER_NAME),
        Role::Storage(_) => Some(STORAGE_SERVER_NAME),
        Role::Operator | Role::Client => None,
    };
    let mut sans: Vec<String> = match server {
        Some(n) => vec![n.to_string()],
        None => vec![format!("{name}.augur")],
    };
    sans.extend(hosts.iter().cloned());
    let mut params = CertificateParams::new(sans)?;
    params
        .subject_alt_names
        .push(rcgen::SanType::URI(rcgen::Ia5String::try_from(role.uri())?));
    params.distinguished_name = dn(name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match server {
        Some(_) => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        None => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let cert_path = out.join(format!("{name}.pem"));
    let key_path = out.join(format!("{name}.key"));
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_and_leaves_are_written_and_names_checked() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path()).unwrap();
        let (c, k) = issue(
            dir.path(),
            dir.path(),
            "meta-1",
            Role::Member,
            &["127.0.0.1".into()],
        )
        .unwrap();
        let pem = std::fs::read_to_string(&c).unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE"));
        // The role is in the certificate, where a server reads it.
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(
            augur_transport::roles::role_of_certificate(der.as_ref()),
            Ok(Role::Member)
        );
        for role in [
            Role::Operator,
            Role::Client,
            Role::Storage(augur_proto::NodeId(4)),
        ] {
            let (c, _) = issue(dir.path(), dir.path(), "x", role, &[]).unwrap();
            let pem = std::fs::read_to_string(c).unwrap();
            let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert_eq!(
                augur_transport::roles::role_of_certificate(der.as_ref()),
                Ok(role)
            );
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            issue(dir.path(), dir.path(), "../evil", Role::Client, &[]),
            Err(CertError::BadName(_))
        ));
        assert!(issue(&dir.path().join("nope"), dir.path(), "x", Role::Client, &[]).is_err());
    }
}
