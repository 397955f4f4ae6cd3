//! Login tokens (docs/protocol.md, "Identity"): `USER_ID.EXPIRES_UNIX.SIG`,
//! where SIG is the lowercase hex HMAC-SHA256 of the text
//! `USER_ID.EXPIRES_UNIX` under a secret shared with the web app.
//!
//! The secret is the configured `SWITCHBOARD_TOKEN_SECRET` taken as its
//! UTF-8 bytes, or, without one, the text kept in `data_dir/token_secret`
//! (also taken as its bytes, so copying that file's content into
//! `SWITCHBOARD_TOKEN_SECRET` gives the same key).

use crate::limits;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use switchboard_shards::model::UserId;

type HmacSha256 = Hmac<Sha256>;

/// File name of the generated secret inside the data directory.
pub const SECRET_FILE_NAME: &str = "token_secret";

/// Why a token was refused. All three reach the client as `unauthorized`;
/// the distinction is for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not `DIGITS.DIGITS.64-lowercase-hex`, a number out of range, or
    /// user id 0.
    Malformed,
    /// Well formed, but the signature is not the secret's.
    BadSignature,
    /// Genuine, but its expiry time has been reached.
    Expired,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Malformed => write!(f, "malformed token"),
            TokenError::BadSignature => write!(f, "token signature does not match"),
            TokenError::Expired => write!(f, "token expired"),
        }
    }
}

impl std::error::Error for TokenError {}

/// Mints the token for `user`, valid until `expires_unix` (seconds). What
/// the web app does; here for tests, benches and the demo.
pub fn mint(secret: &[u8], user: UserId, expires_unix: u64) -> String {
    let payload = format!("{user}.{expires_unix}");
    let sig = mac(secret, payload.as_bytes()).finalize().into_bytes();
    let mut token = payload;
    token.push('.');
    push_hex(&mut token, &sig);
    token
}

/// Checks a token and returns the user it names. A token is valid while
/// `now_unix < EXPIRES_UNIX`. The signature is compared in constant time
/// and checked before the expiry, so a forged token never learns whether
/// its expiry would have passed.
pub fn verify(secret: &[u8], token: &str, now_unix: u64) -> Result<UserId, TokenError> {
    let mut parts = token.split('.');
    let (Some(user_text), Some(expires_text), Some(sig_text), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let user = parse_number(user_text).ok_or(TokenError::Malformed)?;
    let expires_unix = parse_number(expires_text).ok_or(TokenError::Malformed)?;
    if user == 0 {
        return Err(TokenError::Malformed);
    }
    let sig = parse_sig(sig_text).ok_or(TokenError::Malformed)?;
    // The signed text is exactly what precedes the last dot.
    let payload = &token[..user_text.len() + 1 + expires_text.len()];
    mac(secret, payload.as_bytes())
        .verify_slice(&sig)
        .map_err(|_| TokenError::BadSignature)?;
    if now_unix >= expires_unix {
        return Err(TokenError::Expired);
    }
    Ok(user)
}

/// Returns the secret kept in `data_dir/token_secret`, never creating it
/// (`NotFound` when absent): for the `switchboard token` command, which
/// must sign with the secret the server uses or say it found none.
pub fn load_secret(data_dir: &Path) -> io::Result<Vec<u8>> {
    read_secret(&data_dir.join(SECRET_FILE_NAME))
}

/// Returns the secret kept in `data_dir/token_secret`, creating it first
/// when absent: [`limits::TOKEN_SECRET_BYTES`] random bytes, written as
/// lowercase hex plus a newline, mode 0600. The key is the file's text
/// without trailing whitespace, as bytes.
///
/// Creation is atomic: the text is written and fsynced to a temporary file
/// that is then linked into place, so a reader never sees a partial file
/// and, when two processes race, both end up with the one that won.
pub fn load_or_create_secret(data_dir: &Path) -> io::Result<Vec<u8>> {
    let path = data_dir.join(SECRET_FILE_NAME);
    match read_secret(&path) {
        Ok(secret) => return Ok(secret),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    crate::files::create_dir_private(data_dir)?;
    let mut raw = [0u8; limits::TOKEN_SECRET_BYTES];
    getrandom::getrandom(&mut raw).map_err(|e| io::Error::other(e.to_string()))?;
    let mut text = String::with_capacity(raw.len() * 2 + 1);
    push_hex(&mut text, &raw);
    text.push('\n');

    let tmp = data_dir.join(format!(
        "{}{}.{:x}",
        crate::files::SECRET_TMP_PREFIX,
        std::process::id(),
        u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"))
    ));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        // hard_link is a rename that refuses to replace: the first secret
        // written wins and everyone reads it.
        match fs::hard_link(&tmp, &path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            // Filesystems without hard links: plain rename (last one wins).
            Err(_) => fs::rename(&tmp, &path),
        }
    })();
    let _ = fs::remove_file(&tmp);
    written?;
    if let Ok(dir) = fs::File::open(data_dir) {
        // Make the new directory entry durable too; failure here only
        // risks regenerating the secret after a power cut.
        let _ = dir.sync_all();
    }
    read_secret(&path)
}

fn read_secret(path: &Path) -> io::Result<Vec<u8>> {
    let meta = fs::metadata(path)?;
    if meta.permissions().mode() & 0o077 != 0 {
        log::warn!(
            "token secret {} is readable by others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    if meta.len() > 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("token secret {} is over 4096 bytes", path.display()),
        ));
    }
    let text = fs::read(path)?;
    let end = text
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    if end < limits::TOKEN_SECRET_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "token secret {} is shorter than {} bytes",
                path.display(),
                limits::TOKEN_SECRET_BYTES
            ),
        ));
    }
    Ok(text[..end].to_vec())
}

fn mac(secret: &[u8], payload: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(payload);
    mac
}

/// A token number in canonical form: 1–20 ASCII digits (no sign, no
/// spaces, no leading zero unless it is `0`) that fit a u64. So a user and
/// expiry have one token text, the one [`mint`] writes: a web app that
/// signed `01.EXP` by mistake gets `malformed`, never user 1.
fn parse_number(text: &str) -> Option<u64> {
    if text.is_empty()
        || text.len() > limits::TOKEN_NUMBER_DIGITS_MAX
        || (text.len() > 1 && text.starts_with('0'))
        || !text.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    text.parse().ok()
}

/// Exactly 64 lowercase hex digits.
fn parse_sig(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut sig = [0u8; 32];
    for (out, pair) in sig.iter_mut().zip(bytes.chunks_exact(2)) {
        *out = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(sig)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test secret, shared with the web app";
    const NOW: u64 = 1_700_000_000;

    #[test]
    fn round_trip() {
        let token = mint(SECRET, 42, NOW + 60);
        assert!(token.starts_with("42.1700000060."));
        assert_eq!(token.len(), "42.1700000060.".len() + 64);
        assert_eq!(verify(SECRET, &token, NOW), Ok(42));
        assert_eq!(verify(SECRET, &token, NOW + 59), Ok(42));
        let big = mint(SECRET, u64::MAX, u64::MAX);
        assert_eq!(verify(SECRET, &big, NOW), Ok(u64::MAX));
    }

    #[test]
    fn known_vectors() {
        // Computed independently:
        // `printf 1.2 | openssl dgst -sha256 -hmac key`.
        let token = "1.2.8fd3e425c8cc4125a575713fa5d5dc02925157009da4f86dd92a59cfd9138253";
        assert_eq!(mint(b"key", 1, 2), token);
        assert_eq!(verify(b"key", token, 1), Ok(1));
        let token =
            "42.1700000060.0fbeb4c8bcaebbccff4ce7e90957441bf5943883d37d024f0ff47917c306a068";
        assert_eq!(mint(b"Jefe", 42, NOW + 60), token);
        assert_eq!(verify(b"Jefe", token, NOW), Ok(42));
    }

    #[test]
    fn expired() {
        let token = mint(SECRET, 7, NOW);
        assert_eq!(verify(SECRET, &token, NOW), Err(TokenError::Expired));
        assert_eq!(verify(SECRET, &token, NOW + 1), Err(TokenError::Expired));
        assert_eq!(verify(SECRET, &token, NOW - 1), Ok(7));
    }

    #[test]
    fn forged_and_wrong_secret() {
        let token = mint(SECRET, 7, NOW + 60);
        assert_eq!(
            verify(b"another secret", &token, NOW),
            Err(TokenError::BadSignature)
        );
        // Same signature, other user or later expiry.
        let sig = token.rsplit('.').next().unwrap();
        for forged in [
            format!("8.{}.{sig}", NOW + 60),
            format!("7.{}.{sig}", NOW + 61),
        ] {
            assert_eq!(verify(SECRET, &forged, NOW), Err(TokenError::BadSignature));
        }
        // One flipped signature digit.
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(verify(SECRET, &flipped, NOW), Err(TokenError::BadSignature));
        // An expired forgery reports the forgery.
        let old = format!("7.{}.{sig}", NOW - 10);
        assert_eq!(verify(SECRET, &old, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn malformed() {
        let good = mint(SECRET, 7, NOW + 60);
        let sig = good.rsplit('.').next().unwrap().to_string();
        let exp = NOW + 60;
        let check = |token: &str, why: &str| {
            assert_eq!(
                verify(SECRET, token, NOW),
                Err(TokenError::Malformed),
                "{why}: {token:?}"
            );
        };
        check("", "empty");
        check("7", "one part");
        check(&format!("7.{exp}"), "no signature");
        check(&format!("7.{exp}."), "empty signature");
        check(&format!(".{exp}.{sig}"), "empty user");
        check(&format!("7..{sig}"), "empty expiry");
        check(&format!("{good}.x"), "extra part");
        check(&format!("{good}."), "trailing dot");
        check(&format!("7.{exp}..{sig}"), "extra dot");
        check(&format!("0.{exp}.{sig}"), "user 0");
        check(&format!("+7.{exp}.{sig}"), "leading plus");
        check(&format!("-7.{exp}.{sig}"), "minus");
        check(&format!(" 7.{exp}.{sig}"), "leading space");
        check(&format!("7.+{exp}.{sig}"), "plus expiry");
        check(&format!("7a.{exp}.{sig}"), "non-digit user");
        check(&format!("7.{exp}x.{sig}"), "non-digit expiry");
        check(&format!("7.{exp}.{}", sig.to_uppercase()), "uppercase hex");
        check(&format!("7.{exp}.{}", &sig[..63]), "short signature");
        check(&format!("7.{exp}.{sig}0"), "long signature");
        check(&format!("7.{exp}.{}g", &sig[..63]), "non-hex signature");
        check(
            &format!("18446744073709551616.{exp}.{sig}"),
            "user over u64",
        );
        check(&format!("7.18446744073709551616.{sig}"), "expiry over u64");
        check(&format!("{}.{exp}.{sig}", "9".repeat(1000)), "huge user");
        check(&format!("7.{exp}.{sig}\n"), "trailing newline");
        check("٣.5.x", "non-ASCII digit");
    }

    /// Only the canonical text of a user and expiry is a token: one
    /// signed over `01.EXP` (or `1.0EXP`) is malformed, not user 1, even
    /// with a genuine signature over that text.
    #[test]
    fn non_canonical_numbers_are_malformed_even_when_signed() {
        let exp = NOW + 60;
        let signed = |payload: &str| {
            let mut token = payload.to_string();
            token.push('.');
            push_hex(
                &mut token,
                &mac(SECRET, payload.as_bytes()).finalize().into_bytes(),
            );
            token
        };
        for payload in [
            format!("01.{exp}"),
            format!("007.{exp}"),
            format!("1.0{exp}"),
            format!("+1.{exp}"),
            format!(" 1.{exp}"),
            format!("1 .{exp}"),
            format!("1.{exp} "),
        ] {
            assert_eq!(
                verify(SECRET, &signed(&payload), NOW),
                Err(TokenError::Malformed),
                "{payload:?}"
            );
        }
        assert_eq!(verify(SECRET, &signed(&format!("1.{exp}")), NOW), Ok(1));
        // Expiry 0 is canonical (and long past).
        assert_eq!(
            verify(SECRET, &signed("1.0"), NOW),
            Err(TokenError::Expired)
        );
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-storage-token-{name}-{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn secret_is_created_once_with_mode_0600() {
        let dir = temp_dir("secret");
        let first = load_or_create_secret(&dir).unwrap();
        assert_eq!(first.len(), limits::TOKEN_SECRET_BYTES * 2);
        assert!(first.iter().all(|&b| hex_digit(b).is_some()));
        let meta = fs::metadata(dir.join(SECRET_FILE_NAME)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let second = load_or_create_secret(&dir).unwrap();
        assert_eq!(first, second);
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SECRET_FILE_NAME)]);
        // The file's text is the key: a token minted with it verifies.
        let token = mint(&second, 3, NOW + 1);
        assert_eq!(verify(&first, &token, NOW), Ok(3));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn short_secret_file_is_refused() {
        let dir = temp_dir("short");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(SECRET_FILE_NAME), "abc\n").unwrap();
        let err = load_or_create_secret(&dir).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        fs::remove_dir_all(&dir).unwrap();
    }
}
