//! DKIM signing keys: RSA (PKCS#1 or PKCS#8 PEM) and Ed25519 (PKCS#8 PEM).
//!
//! Signs with relaxed/relaxed canonicalization: lettre's default
//! simple/relaxed failed independent verification (dkimpy).

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm, DkimSigningKey,
};
use lettre::message::header::HeaderName;

use crate::config::Dkim;

/// Headers signed, in this order.
const SIGNED: [&str; 8] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
];

/// Reads the key file and builds lettre's signer config.
pub(crate) fn load(dkim: &Dkim) -> Result<DkimConfig> {
    let path = &dkim.private_key_file;
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read DKIM key `{}`", path.display()))?;
    let key = signing_key(&pem).with_context(|| format!("DKIM key `{}`", path.display()))?;
    let headers = SIGNED.iter().map(|h| HeaderName::new_from_ascii_str(h)).collect();
    Ok(DkimConfig::new(
        dkim.selector.clone(),
        dkim.domain.clone(),
        key,
        headers,
        DkimCanonicalization {
            header: DkimCanonicalizationType::Relaxed,
            body: DkimCanonicalizationType::Relaxed,
        },
    ))
}

fn signing_key(pem: &str) -> Result<DkimSigningKey> {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::pkcs8::DecodePrivateKey as _;
    if pem.contains("BEGIN RSA PRIVATE KEY") {
        return DkimSigningKey::new(pem, DkimSigningAlgorithm::Rsa).map_err(|e| anyhow::anyhow!("{e}"));
    }
    if !pem.contains("BEGIN PRIVATE KEY") {
        bail!("not a PEM private key (expected BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)");
    }
    if let Ok(rsa) = rsa::RsaPrivateKey::from_pkcs8_pem(pem) {
        let pkcs1 = rsa
            .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
            .context("cannot convert the RSA key")?;
        return DkimSigningKey::new(&pkcs1, DkimSigningAlgorithm::Rsa).map_err(|e| anyhow::anyhow!("{e}"));
    }
    let seed = ed25519_seed(pem)?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(seed);
    DkimSigningKey::new(&b64, DkimSigningAlgorithm::Ed25519).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The 32-byte seed of an Ed25519 PKCS#8 key (RFC 8410: a fixed 16-byte prefix).
fn ed25519_seed(pem: &str) -> Result<[u8; 32]> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];
    use rustls_pki_types::pem::PemObject as _;
    let key = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot decode the PEM: {e}"))?;
    let der = key.secret_pkcs8_der();
    if der.len() != 48 || der[..16] != PREFIX {
        bail!("unsupported key: use an RSA key (PKCS#1 or PKCS#8) or an Ed25519 PKCS#8 key");
    }
    let mut seed = [0; 32];
    seed.copy_from_slice(&der[16..]);
    Ok(seed)
}
