//! Certificate roles: what the holder of a certificate may ask for.
//!
//! A certificate names its role in a subject-alternative-name URI, so the role is signed by
//! the cluster CA together with the key and cannot be claimed by a connection:
//!
//! | role | URI | may |
//! |---|---|---|
//! | metadata member | `augur:role:member` | everything, and alone speak Raft |
//! | storage node | `augur:role:storage:<node id>` | its own node record, the shard changes it is entitled to request, reads |
//! | operator | `augur:role:operator` | membership, leader transfer, bootstrap, any metadata write |
//! | client | `augur:role:client` | the data API and metadata reads |
//!
//! What each request needs is decided by the server that serves it; this module only says who
//! is asking. A certificate with no role URI, or more than one, has no role and is refused.

use augur_proto::NodeId;
use std::fmt;

const PREFIX: &str = "augur:role:";

/// Who the holder of a certificate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A member of the metadata Raft group.
    Member,
    /// A storage node, by the node id its certificate was issued for.
    Storage(NodeId),
    /// An operator: membership and any metadata change.
    Operator,
    /// An application: data API and metadata reads.
    Client,
}

impl Role {
    /// The SAN URI that carries this role in a certificate.
    pub fn uri(&self) -> String {
        match self {
            Role::Member => format!("{PREFIX}member"),
            Role::Storage(id) => format!("{PREFIX}storage:{id}"),
            Role::Operator => format!("{PREFIX}operator"),
            Role::Client => format!("{PREFIX}client"),
        }
    }

    /// Parses a SAN URI; `None` if it is not an Augur role URI or names an unknown role.
    pub fn from_uri(uri: &str) -> Option<Role> {
        let rest = uri.strip_prefix(PREFIX)?;
        match rest {
            "member" => Some(Role::Member),
            "operator" => Some(Role::Operator),
            "client" => Some(Role::Client),
            _ => {
                let id = rest.strip_prefix("storage:")?;
                id.parse::<NodeId>().ok().map(Role::Storage)
            }
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Member => f.write_str("member"),
            Role::Storage(id) => write!(f, "storage node {id}"),
            Role::Operator => f.write_str("operator"),
            Role::Client => f.write_str("client"),
        }
    }
}

/// Why a connection has no usable role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// The handshake left no certificate to look at (cannot happen with mutual TLS).
    #[error("no peer certificate")]
    NoCertificate,
    /// The certificate does not parse as X.509.
    #[error("peer certificate does not parse: {0}")]
    Unparsable(String),
    /// The certificate carries no Augur role URI.
    #[error("peer certificate names no role (reissue it with `augur cert`)")]
    NoRole,
    /// The certificate names more than one role: ambiguous, so refused.
    #[error("peer certificate names more than one role")]
    Ambiguous,
}

/// The role named by a DER certificate.
pub fn role_of_certificate(der: &[u8]) -> Result<Role, RoleError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| RoleError::Unparsable(e.to_string()))?;
    let mut found = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(role) = Role::from_uri(uri) {
                    if found.is_some_and(|r| r != role) {
                        return Err(RoleError::Ambiguous);
                    }
                    found = Some(role);
                }
            }
        }
    }
    found.ok_or(RoleError::NoRole)
}

/// The role of the peer at the other end of an authenticated connection.
pub fn peer_role(conn: &quinn::Connection) -> Result<Role, RoleError> {
    let identity = conn.peer_identity().ok_or(RoleError::NoCertificate)?;
    let chain = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| RoleError::NoCertificate)?;
    let leaf = chain.first().ok_or(RoleError::NoCertificate)?;
    role_of_certificate(leaf.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_junk_is_refused() {
        for role in [
            Role::Member,
            Role::Operator,
            Role::Client,
            Role::Storage(NodeId(42)),
        ] {
            assert_eq!(Role::from_uri(&role.uri()), Some(role));
        }
        for junk in [
            "augur:role:",
            "augur:role:root",
            "augur:role:storage:",
            "augur:role:storage:0",
            "augur:role:storage:x",
            "https://augur/role/member",
        ] {
            assert_eq!(Role::from_uri(junk), None, "{junk}");
        }
    }

    fn cert_with(uris: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["augur-meta".to_string()]).unwrap();
        for u in uris {
            params.subject_alt_names.push(rcgen::SanType::URI(
                rcgen::Ia5String::try_from(u.to_string()).unwrap(),
            ));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn roles_are_read_from_certificates() {
        assert_eq!(
            role_of_certificate(&cert_with(&["augur:role:operator"])),
            Ok(Role::Operator)
        );
        assert_eq!(
            role_of_certificate(&cert_with(&["augur:role:storage:7"])),
            Ok(Role::Storage(NodeId(7)))
        );
        assert_eq!(role_of_certificate(&cert_with(&[])), Err(RoleError::NoRole));
        assert_eq!(
            role_of_certificate(&cert_with(&["augur:role:client", "augur:role:member"])),
            Err(RoleError::Ambiguous)
        );
        assert!(matches!(
            role_of_certificate(b"not a certificate"),
            Err(RoleError::Unparsable(_))
        ));
    }
}
