//! Issuing and inspecting certificates and keys (rcgen to write, x509-parser
//! to read back). Everything here is pure: no host access.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::spec::SanSet;
use super::{RenewReason, CA_VALIDITY, LEAF_VALIDITY, RENEW_BEFORE};

/// New certificates start this long before `now`, so that a peer whose
/// clock is a little behind still accepts them.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// What a leaf certificate must say about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Profile {
    pub cn: String,
    pub org: Option<String>,
    pub sans: SanSet,
    pub server_auth: bool,
    pub client_auth: bool,
}

/// A CA ready to sign: its certificate as stored and its key.
pub(crate) struct Ca {
    pub cert_pem: Vec<u8>,
    pub cert_der: Vec<u8>,
    pub not_after: i64,
    pub issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Builds the signer from the certificate's own bytes, so that issued
    /// certificates name the issuer exactly as the CA certificate names itself.
    pub fn new(cert_pem: Vec<u8>, cert_der: Vec<u8>, key: KeyPair) -> Result<Self, rcgen::Error> {
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        let not_after = cert.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)?;
        Ok(Ca {
            cert_pem,
            cert_der,
            not_after,
            issuer,
        })
    }
}

pub(crate) fn new_key() -> Result<KeyPair, rcgen::Error> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
}

/// A self-signed CA certificate for `key` (kubeadm's `NewSelfSignedCACert`:
/// CN and a DNS SAN equal to the CA name, no path length limit).
pub(crate) fn self_signed_ca(cn: &str, key: &KeyPair, now: i64) -> Result<Vec<u8>, rcgen::Error> {
    let mut p = base_params(now, now + CA_VALIDITY.as_secs() as i64)?;
    p.distinguished_name = dn(cn, None);
    p.subject_alt_names = vec![SanType::DnsName(cn.try_into()?)];
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    Ok(p.self_signed(key)?.der().to_vec())
}

/// A leaf certificate for `key` signed by `ca`, valid for a year but never
/// beyond the CA itself.
pub(crate) fn issue(
    profile: &Profile,
    key: &KeyPair,
    ca: &Ca,
    now: i64,
) -> Result<String, rcgen::Error> {
    issue_for(profile, key, ca, now, LEAF_VALIDITY)
}

/// [`issue`], valid for `validity` (never beyond the CA).
pub(crate) fn issue_for(
    profile: &Profile,
    key: &KeyPair,
    ca: &Ca,
    now: i64,
    validity: Duration,
) -> Result<String, rcgen::Error> {
    let not_after = (now + validity.as_secs() as i64).min(ca.not_after);
    let mut p = base_params(now, not_after)?;
    p.distinguished_name = dn(&profile.cn, profile.org.as_deref());
    for name in &profile.sans.dns {
        p.subject_alt_names
            .push(SanType::DnsName(name.as_str().try_into()?));
    }
    for ip in &profile.sans.ips {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if profile.server_auth {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if profile.client_auth {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    p.use_authority_key_identifier_extension = true;
    Ok(p.signed_by(key, &ca.issuer)?.pem())
}

fn base_params(now: i64, not_after: i64) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::default();
    p.not_before = odt(now - BACKDATE.as_secs() as i64)?;
    p.not_after = odt(not_after)?;
    p.serial_number = Some(random_serial());
    Ok(p)
}

/// Go's `pkix.Name` order: O before CN.
fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

/// 128 random bits, positive (like kubeadm's random serials; rcgen's
/// default is a hash of the key, which would repeat when a CA certificate
/// is re-made for an existing key).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn odt(secs: i64) -> Result<OffsetDateTime, rcgen::Error> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| rcgen::Error::Time)
}

/// Seconds since the epoch (negative before it).
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

pub(crate) fn system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// RFC 3339, UTC, second precision.
pub(crate) fn fmt_time(t: SystemTime) -> String {
    match OffsetDateTime::from_unix_timestamp(unix_secs(t)) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        Err(_) => format!("{} s after the epoch", unix_secs(t)),
    }
}

/// Why a certificate or key (or the client certificate a kubeconfig
/// embeds) cannot be read. Each message is a clause about the file ("it is
/// not PEM"), for the caller to put after the file's name.
///
/// Callers put the message into a sentence of their own (a reason field),
/// so no variant exposes a `source()`: the text of a cause is part of the
/// clause.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    /// The file is absent.
    #[error("not on this host")]
    NotOnHost,
    /// No PEM block.
    #[error("it is not PEM")]
    NotPem,
    /// A PEM block of another kind.
    #[error("its PEM block is {found:?}, expected {expected:?}")]
    WrongBlock {
        found: String,
        expected: &'static str,
    },
    /// A `CERTIFICATE` block that x509-parser cannot read.
    #[error("it is not an X.509 certificate")]
    NotX509,
    /// A PKCS#8 block with a key rcgen's ring backend cannot use.
    #[error("it is not a supported key (ECDSA P-256/P-384, Ed25519 or RSA)")]
    UnsupportedKey,
    /// A PKCS#1 or SEC1 key (older kubeadm writes those).
    #[error("it is a {tag:?} block and only PKCS#8 (\"PRIVATE KEY\") keys can be read; convert it with 'openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pkcs8' and move that into place")]
    NotPkcs8 { tag: String },
    /// A PEM block that holds no private key.
    #[error("its PEM block is {tag:?}, not a private key")]
    NotAKey { tag: String },
    /// A CA certificate and key that rcgen cannot sign with.
    #[error("it cannot sign: {0}")]
    CannotSign(rcgen::Error),
    /// A kubeconfig that does not parse.
    #[error("it is not a kubeconfig selfnode can read")]
    NotAKubeconfig,
    /// A kubeconfig whose current context has no user.
    #[error("its current context names no user")]
    NoKubeconfigUser,
    /// A kubeconfig whose user has no `client-certificate-data`.
    #[error("it embeds no client certificate (the kubelet's may be a file it rotates)")]
    NoClientCertificate,
}

/// The DER of the first PEM block, which must carry `tag`.
pub(crate) fn pem_der(bytes: &[u8], tag: &'static str) -> Result<Vec<u8>, CertError> {
    let block = pem::parse(bytes).map_err(|_| CertError::NotPem)?;
    if block.tag() != tag {
        return Err(CertError::WrongBlock {
            found: block.tag().to_string(),
            expected: tag,
        });
    }
    Ok(block.into_contents())
}

/// The IP addresses a certificate in PEM names in its subjectAltName;
/// `None` when it cannot be read.
pub fn ip_sans(pem_bytes: &[u8]) -> Option<Vec<IpAddr>> {
    let der = pem_der(pem_bytes, "CERTIFICATE").ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    Some(
        san.value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::IPAddress(b) => ip_from_bytes(b),
                _ => None,
            })
            .collect(),
    )
}

/// A private key in PEM. Only PKCS#8 is readable with the ring backend; the
/// error says how to convert the PKCS#1/SEC1 keys older kubeadm writes.
pub(crate) fn parse_key(bytes: &[u8]) -> Result<KeyPair, CertError> {
    let block = pem::parse(bytes).map_err(|_| CertError::NotPem)?;
    match block.tag() {
        "PRIVATE KEY" => KeyPair::try_from(block.contents()).map_err(|_| CertError::UnsupportedKey),
        tag @ ("RSA PRIVATE KEY" | "EC PRIVATE KEY") => Err(CertError::NotPkcs8 {
            tag: tag.to_string(),
        }),
        tag => Err(CertError::NotAKey {
            tag: tag.to_string(),
        }),
    }
}

/// True if `key` is the private half of the certificate's public key.
pub(crate) fn key_matches(key: &KeyPair, cert: &X509Certificate<'_>) -> bool {
    key.der_bytes() == cert.public_key().subject_public_key.data.as_ref()
}

/// The SubjectPublicKeyInfo DER of `key` (what `sa.pub` holds).
pub(crate) fn spki_der(key: &KeyPair) -> Vec<u8> {
    key.subject_public_key_info()
}

/// Decides whether an existing leaf can stay. `Err` says why it must be re-issued.
pub(crate) fn check_leaf(
    cert_pem: &[u8],
    key_pem: &[u8],
    want: &Profile,
    ca: &Ca,
    now: i64,
) -> Result<(), RenewReason> {
    let der = pem_der(cert_pem, "CERTIFICATE").map_err(|_| RenewReason::CertUnreadable)?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|_| RenewReason::CertUnreadable)?;
    let key = parse_key(key_pem).map_err(|_| RenewReason::KeyUnreadable)?;
    if !key_matches(&key, &cert) {
        return Err(RenewReason::KeyMismatch);
    }
    let (_, ca_cert) =
        X509Certificate::from_der(&ca.cert_der).map_err(|_| RenewReason::NotSignedByCa)?;
    if cert.issuer().as_raw() != ca_cert.subject().as_raw()
        || cert.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return Err(RenewReason::NotSignedByCa);
    }
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if now < not_before {
        return Err(RenewReason::NotYetValid {
            not_before: system_time(not_before),
        });
    }
    if now >= not_after {
        return Err(RenewReason::Expired {
            not_after: system_time(not_after),
        });
    }
    // A leaf already capped at the CA's expiry cannot get any better by renewal.
    if not_after - now < RENEW_BEFORE.as_secs() as i64 && not_after < ca.not_after {
        return Err(RenewReason::ExpiresSoon {
            not_after: system_time(not_after),
        });
    }
    let got = observed_profile(&cert).ok_or(RenewReason::CertUnreadable)?;
    if got.cn != want.cn || got.org != want.org {
        return Err(RenewReason::SubjectChanged {
            want: subject_string(want),
            got: subject_string(&got),
        });
    }
    if (got.server_auth, got.client_auth) != (want.server_auth, want.client_auth) {
        return Err(RenewReason::UsageChanged);
    }
    if got.sans != want.sans {
        return Err(RenewReason::SansChanged {
            added: want.sans.minus(&got.sans),
            removed: got.sans.minus(&want.sans),
        });
    }
    Ok(())
}

fn subject_string(p: &Profile) -> String {
    match &p.org {
        Some(o) => format!("O={o}, CN={}", p.cn),
        None => format!("CN={}", p.cn),
    }
}

/// What a certificate says about itself, in [`Profile`] terms. `None` for
/// anything a leaf of ours never has (several CNs or Os, CA flag, odd SANs
/// or extended key usages).
fn observed_profile(cert: &X509Certificate<'_>) -> Option<Profile> {
    if cert.is_ca() {
        return None;
    }
    let single = |mut it: std::vec::IntoIter<String>| -> Option<Option<String>> {
        let first = it.next();
        match it.next() {
            Some(_) => None,
            None => Some(first),
        }
    };
    let cns: Vec<String> = cert
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().map(str::to_string))
        .collect::<Result<_, _>>()
        .ok()?;
    let orgs: Vec<String> = cert
        .subject()
        .iter_organization()
        .map(|a| a.as_str().map(str::to_string))
        .collect::<Result<_, _>>()
        .ok()?;
    let cn = single(cns.into_iter())??;
    let org = single(orgs.into_iter())?;

    let mut sans = SanSet::default();
    if let Some(ext) = cert.subject_alternative_name().ok()? {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.add_dns(d),
                GeneralName::IPAddress(b) => sans.add_ip(ip_from_bytes(b)?),
                _ => return None,
            }
        }
    }
    let (mut server_auth, mut client_auth) = (false, false);
    if let Some(eku) = cert.extended_key_usage().ok()? {
        let e = eku.value;
        if e.any || e.code_signing || e.email_protection || e.time_stamping || e.ocsp_signing {
            return None;
        }
        if !e.other.is_empty() {
            return None;
        }
        server_auth = e.server_auth;
        client_auth = e.client_auth;
    }
    Some(Profile {
        cn,
        org,
        sans,
        server_auth,
        client_auth,
    })
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}
