//! What a kubelet's client-certificate request asks for, checked before a
//! control-plane host's agent approves it (upstream's rules for the
//! `kubernetes.io/kube-apiserver-client-kubelet` signer, and a valid
//! signature by the key it names).

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use super::names;

/// A certificate request that is not a kubelet's client certificate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    /// Not a PEM `CERTIFICATE REQUEST`.
    #[error("not a PEM certificate request")]
    NotPem,
    /// The DER does not parse.
    #[error("the certificate request does not parse")]
    Malformed,
    /// The request is not signed by the key it names.
    #[error("the certificate request's signature does not verify")]
    BadSignature,
    /// The subject is not `CN=system:node:<name>, O=system:nodes`.
    #[error("the subject is not CN=system:node:<name>, O=system:nodes ({0})")]
    Subject(String),
    /// It asks for names or addresses (a client certificate has none).
    #[error("a kubelet client certificate has no subject alternative names")]
    Sans,
}

/// What a kubelet's serving-certificate request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingRequest {
    /// The node (`CN=system:node:<node>`).
    pub node: String,
    /// The DNS names it asks for.
    pub dns: Vec<String>,
    /// The addresses it asks for.
    pub ips: Vec<std::net::IpAddr>,
}

/// What a kubelet serving-certificate request asks for, if it is one:
/// `CN=system:node:<name>`, `O=system:nodes` and nothing else, at least one
/// name or address and no other kind of name, signed by its own key.
pub fn kubelet_serving_request(pem_bytes: &[u8]) -> Result<ServingRequest, CsrError> {
    signed_request(pem_bytes, serving_request)
}

fn serving_request(csr: &X509CertificationRequest) -> Result<ServingRequest, CsrError> {
    let node = node_of(csr)?;
    let mut out = ServingRequest {
        node,
        dns: Vec::new(),
        ips: Vec::new(),
    };
    for e in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = e {
            for name in &san.general_names {
                use x509_parser::extensions::GeneralName;
                match name {
                    GeneralName::DNSName(d) => out.dns.push(d.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => out.ips.push(std::net::IpAddr::from(
                            <[u8; 4]>::try_from(*b).map_err(|_| CsrError::Malformed)?,
                        )),
                        16 => out.ips.push(std::net::IpAddr::from(
                            <[u8; 16]>::try_from(*b).map_err(|_| CsrError::Malformed)?,
                        )),
                        _ => return Err(CsrError::Malformed),
                    },
                    _ => return Err(CsrError::Sans),
                }
            }
        }
    }
    if out.dns.is_empty() && out.ips.is_empty() {
        return Err(CsrError::Sans);
    }
    Ok(out)
}

/// `<name>` of a subject that is exactly `CN=system:node:<name>`,
/// `O=system:nodes`.
fn node_of(csr: &X509CertificationRequest<'_>) -> Result<String, CsrError> {
    let subject = &csr.certification_request_info.subject;
    let text = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.filter_map(|a| a.as_str().ok().map(str::to_string))
            .collect::<Vec<_>>()
    };
    let cns = text(&mut subject.iter_common_name());
    let orgs = text(&mut subject.iter_organization());
    let describe = || format!("CN {cns:?}, O {orgs:?}");
    let [cn] = cns.as_slice() else {
        return Err(CsrError::Subject(describe()));
    };
    if orgs != [names::NODES_GROUP] || subject.iter().count() != 2 {
        return Err(CsrError::Subject(describe()));
    }
    cn.strip_prefix(names::NODE_USER_PREFIX)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .ok_or_else(|| CsrError::Subject(describe()))
}

/// The node name a kubelet client-certificate request asks for, if the
/// request is one: `CN=system:node:<name>`, `O=system:nodes` and nothing
/// else, no subject alternative names, signed by its own key.
pub fn node_client_request(pem_bytes: &[u8]) -> Result<String, CsrError> {
    signed_request(pem_bytes, client_request)
}

/// Parses a PEM certificate request, checks its signature by its own key,
/// and hands it to `check`.
fn signed_request<T>(
    pem_bytes: &[u8],
    check: impl FnOnce(&X509CertificationRequest) -> Result<T, CsrError>,
) -> Result<T, CsrError> {
    let block = pem::parse(pem_bytes).map_err(|_| CsrError::NotPem)?;
    if block.tag() != "CERTIFICATE REQUEST" {
        return Err(CsrError::NotPem);
    }
    let (_, csr) =
        X509CertificationRequest::from_der(block.contents()).map_err(|_| CsrError::Malformed)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    check(&csr)
}

fn client_request(csr: &X509CertificationRequest) -> Result<String, CsrError> {
    let name = node_of(csr)?;
    if let Some(mut exts) = csr.requested_extensions() {
        if exts.any(|e| matches!(e, ParsedExtension::SubjectAlternativeName(_))) {
            return Err(CsrError::Sans);
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn csr(cn: &str, org: Option<&str>, san: bool) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        if let Some(o) = org {
            dn.push(DnType::OrganizationName, o);
        }
        params.distinguished_name = dn;
        if san {
            params.subject_alt_names = vec![SanType::DnsName("n1".try_into().unwrap())];
        }
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn a_kubelets_request_names_its_node_and_nothing_else_passes() {
        assert_eq!(
            node_client_request(csr("system:node:n1", Some("system:nodes"), false).as_bytes()),
            Ok("n1".to_string())
        );
        for (cn, org, san) in [
            ("system:node:n1", Some("system:masters"), false),
            ("system:node:n1", None, false),
            ("admin", Some("system:nodes"), false),
            ("system:node:", Some("system:nodes"), false),
            ("system:node:n1", Some("system:nodes"), true),
        ] {
            assert!(
                node_client_request(csr(cn, org, san).as_bytes()).is_err(),
                "{cn} {org:?} {san}"
            );
        }
        assert_eq!(node_client_request(b"nope"), Err(CsrError::NotPem));
    }

    #[test]
    fn a_kubelets_serving_request_names_its_node_and_its_addresses() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "system:node:n1");
        dn.push(DnType::OrganizationName, "system:nodes");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::DnsName("n1".try_into().unwrap()),
            SanType::IpAddress("10.0.0.5".parse().unwrap()),
        ];
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        assert_eq!(
            kubelet_serving_request(pem.as_bytes()),
            Ok(ServingRequest {
                node: "n1".into(),
                dns: vec!["n1".into()],
                ips: vec!["10.0.0.5".parse().unwrap()],
            })
        );
        let none = csr("system:node:n1", Some("system:nodes"), false);
        assert_eq!(
            kubelet_serving_request(none.as_bytes()),
            Err(CsrError::Sans)
        );
    }
}
