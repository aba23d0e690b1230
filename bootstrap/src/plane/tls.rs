//! TLS versions and cipher suites of every server selfnode configures: the
//! kube-apiserver, kube-controller-manager, kube-scheduler, etcd (client
//! and peer listeners) and the kubelet (the audit's F14; CIS 1.2.29,
//! 4.2.12).
//!
//! One list everywhere, [`TLS_CIPHER_SUITES`]: the ECDHE suites with
//! AES-GCM or ChaCha20-Poly1305, for RSA and ECDSA keys. What it removes
//! from Go's defaults is the ECDHE `*_CBC_SHA` suites (RSA key exchange
//! and 3DES are already off). ChaCha20 keeps its legacy names without
//! `_SHA256`: Kubernetes and etcd accept both spellings, and kube-bench's
//! kubelet check (4.2.12) accepts only these. TLS 1.3 suites cannot be
//! chosen in Go, so the list names none; TLS 1.3 stays on.
//!
//! The minimum is TLS 1.2, the components' default too; the flags make it
//! explicit. Kubernetes spells it [`TLS_MIN_VERSION`] (`VersionTLS12`),
//! etcd [`ETCD_TLS_MIN_VERSION`] (`TLS1.2`).

/// The cipher suites of every TLS 1.2 server, in Go's (IANA) names.
pub const TLS_CIPHER_SUITES: [&str; 6] = [
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
];

/// `--tls-min-version` of the Kubernetes components, `tlsMinVersion` of
/// the kubelet.
pub const TLS_MIN_VERSION: &str = "VersionTLS12";

/// etcd's `--tls-min-version`.
pub const ETCD_TLS_MIN_VERSION: &str = "TLS1.2";

/// [`TLS_CIPHER_SUITES`] as one flag value, comma-separated.
pub fn tls_cipher_suites_flag() -> String {
    TLS_CIPHER_SUITES.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ecdhe_aead_suites_with_the_names_kube_bench_accepts() {
        for s in TLS_CIPHER_SUITES {
            assert!(s.starts_with("TLS_ECDHE_"), "{s}");
            assert!(
                s.ends_with("_GCM_SHA256")
                    || s.ends_with("_GCM_SHA384")
                    || s.ends_with("_CHACHA20_POLY1305"),
                "{s}"
            );
        }
        assert_eq!(
            tls_cipher_suites_flag().split(',').count(),
            TLS_CIPHER_SUITES.len()
        );
    }
}
