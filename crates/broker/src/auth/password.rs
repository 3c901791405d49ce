//! Mosquitto's password file: one `username:hash` per line.
//!
//! Two hash formats are read:
//! - `$7$<iterations>$<base64 salt>$<base64 hash>`: PBKDF2-HMAC-SHA512
//!   (Mosquitto 2's default, 101 iterations there);
//! - `$6$<base64 salt>$<base64 hash>`: SHA-512 of the password followed by
//!   the salt (Mosquitto 1.x), so old files keep working.
//!
//! Mosquitto accepts salts of 12 or 64 bytes and 64-byte hashes; so does
//! this. New hashes are `$7$` with a 12-byte random salt and
//! [`DEFAULT_ITERATIONS`], which Mosquitto reads too.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, pbkdf2};

use super::AuthError;

/// PBKDF2 iterations for hashes Tern writes. Mosquitto uses 101. Measured
/// here (release build, x86-64, ring 0.17): 0.6-0.9 µs per iteration (2 shared cores), so
/// 10 000 iterations cost 8-9 ms of one core per verify: every offline guess
/// is 100 times dearer than against a Mosquitto hash, while a wave of a
/// hundred password logins still costs under a second of CPU (and runs on
/// the blocking pool, not the async workers).
pub const DEFAULT_ITERATIONS: u32 = 10_000;
/// Salt length Tern writes (Mosquitto's own).
const SALT_LEN: usize = 12;
/// SHA-512 output length.
const HASH_LEN: usize = 64;

/// One user's stored hash.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// `$6$`: SHA-512(password ‖ salt).
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
}

impl std::fmt::Debug for PasswordHash {
    /// Never prints the salt or hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordHash::Pbkdf2 { iterations, .. } => write!(f, "Pbkdf2({iterations} iterations)"),
            PasswordHash::Sha512 { .. } => f.write_str("Sha512"),
        }
    }
}

impl PasswordHash {
    /// A new `$7$` hash of `password` with a random salt.
    pub fn new(password: &str, iterations: NonZeroU32) -> Result<PasswordHash, String> {
        let mut salt = vec![0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| "no random numbers for a salt".to_string())?;
        let mut hash = vec![0u8; HASH_LEN];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA512,
            iterations,
            &salt,
            password.as_bytes(),
            &mut hash,
        );
        Ok(PasswordHash::Pbkdf2 {
            iterations,
            salt,
            hash,
        })
    }

    /// Parses the part after `username:`. The error says what is wrong,
    /// never what the hash is.
    pub fn parse(text: &str) -> Result<PasswordHash, &'static str> {
        let mut parts = text.split('$');
        if parts.next() != Some("") {
            return Err("hash does not start with '$'");
        }
        let kind = parts.next().ok_or("no hash type")?;
        let iterations = match kind {
            "7" => Some(
                parts
                    .next()
                    .and_then(|i| i.parse::<u32>().ok())
                    .and_then(NonZeroU32::new)
                    .ok_or("invalid iteration count")?,
            ),
            "6" => None,
            _ => return Err("unknown hash type (only $6$ and $7$ are supported)"),
        };
        let salt = parts
            .next()
            .and_then(|s| STANDARD.decode(s).ok())
            .filter(|s| s.len() == SALT_LEN || s.len() == HASH_LEN)
            .ok_or("invalid salt")?;
        let hash = parts
            .next()
            .and_then(|s| STANDARD.decode(s).ok())
            .filter(|h| h.len() == HASH_LEN)
            .ok_or("invalid hash")?;
        if parts.next().is_some() {
            return Err("extra fields after the hash");
        }
        Ok(match iterations {
            Some(iterations) => PasswordHash::Pbkdf2 {
                iterations,
                salt,
                hash,
            },
            None => PasswordHash::Sha512 { salt, hash },
        })
    }

    /// The text form, as stored after `username:`.
    pub fn encode(&self) -> String {
        match self {
            PasswordHash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => format!(
                "$7${iterations}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            ),
            PasswordHash::Sha512 { salt, hash } => {
                format!("$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
        }
    }

    /// Whether `password` matches, in time independent of where they differ.
    /// Slow by design (PBKDF2): call it off the async workers.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => pbkdf2::verify(
                pbkdf2::PBKDF2_HMAC_SHA512,
                *iterations,
                salt,
                password,
                hash,
            )
            .is_ok(),
            PasswordHash::Sha512 { salt, hash } => {
                let mut ctx = digest::Context::new(&digest::SHA512);
                ctx.update(password);
                ctx.update(salt);
                let computed = ctx.finish();
                constant_time_eq(computed.as_ref(), hash)
            }
        }
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The users of a password file.
#[derive(Debug, Default)]
pub struct PasswordTable {
    users: HashMap<String, PasswordHash>,
    /// Verified against when the user is unknown, so an unknown name costs
    /// as long as a wrong password and timing does not tell them apart.
    decoy: Option<PasswordHash>,
}

impl PasswordTable {
    /// Reads `path`. Lines that cannot be used are skipped with a warning
    /// naming the file and line (never the hash); only an unreadable file is
    /// an error.
    pub fn load(path: &Path) -> Result<PasswordTable, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|reason| AuthError::PasswordFile {
            path: path.to_owned(),
            reason,
        })?;
        Ok(Self::parse(&text, path))
    }

    /// Parses a password file's text (`path` is for the warnings).
    pub fn parse(text: &str, path: &Path) -> PasswordTable {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line
                .split_once(':')
                .ok_or("no ':' between username and hash")
                .and_then(|(user, hash)| {
                    let user = user.trim();
                    if user.is_empty() {
                        return Err("empty username");
                    }
                    Ok((user, PasswordHash::parse(hash.trim())?))
                });
            match parsed {
                Ok((user, hash)) => {
                    users.insert(user.to_owned(), hash);
                }
                Err(why) => tracing::warn!(
                    file = %path.display(),
                    line = n + 1,
                    "password file: skipping line: {why}"
                ),
            }
        }
        let decoy = users.values().next().map(|h| match h {
            PasswordHash::Pbkdf2 {
                iterations, salt, ..
            } => PasswordHash::Pbkdf2 {
                iterations: *iterations,
                salt: salt.clone(),
                hash: vec![0; HASH_LEN],
            },
            PasswordHash::Sha512 { salt, .. } => PasswordHash::Sha512 {
                salt: salt.clone(),
                hash: vec![0; HASH_LEN],
            },
        });
        PasswordTable { users, decoy }
    }

    /// Whether `user` exists and `password` is theirs. Slow (PBKDF2): call
    /// it off the async workers.
    pub fn check(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => {
                if let Some(decoy) = &self.decoy {
                    decoy.verify(password);
                }
                false
            }
        }
    }

    /// The hash stored for `user`: a reload compares them, to tell whether
    /// a password verified earlier is still the one the file holds.
    pub fn hash_of(&self, user: &str) -> Option<&PasswordHash> {
        self.users.get(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iterations(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn new_hash_round_trips_and_verifies() {
        let h = PasswordHash::new("s3cret", iterations(1000)).unwrap();
        let text = h.encode();
        assert!(text.starts_with("$7$1000$"), "{text}");
        let parsed = PasswordHash::parse(&text).unwrap();
        assert_eq!(parsed, h);
        assert!(parsed.verify(b"s3cret"));
        assert!(!parsed.verify(b"s3cret "));
        assert!(!parsed.verify(b""));
    }

    #[test]
    fn sha512_hash_verifies() {
        let salt = b"0123456789ab".to_vec();
        let mut ctx = digest::Context::new(&digest::SHA512);
        ctx.update(b"pw");
        ctx.update(&salt);
        let hash = ctx.finish().as_ref().to_vec();
        let text = format!("$6${}${}", STANDARD.encode(&salt), STANDARD.encode(&hash));
        let parsed = PasswordHash::parse(&text).unwrap();
        assert!(parsed.verify(b"pw"));
        assert!(!parsed.verify(b"pW"));
        assert_eq!(parsed.encode(), text);
    }

    #[test]
    fn malformed_hashes_are_refused() {
        for bad in [
            "",
            "plain",
            "$5$abc$def",
            "$7$0$AAAAAAAAAAAAAAAA$AAAA",
            "$7$x$AAAAAAAAAAAAAAAA$AAAA",
            "$7$10$AAAA$AAAA",
            "$7$10$AAAAAAAAAAAAAAAA$AAAA",
            "$6$AAAAAAAAAAAAAAAA",
        ] {
            assert!(PasswordHash::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn table_skips_bad_lines_and_checks() {
        let good = PasswordHash::new("pw", iterations(10)).unwrap().encode();
        let text = format!("# comment\n\nalice:{good}\nbroken line\nbob:$7$x$y$z\n:{good}\n");
        let table = PasswordTable::parse(&text, Path::new("test"));
        assert_eq!(table.len(), 1);
        assert!(table.check("alice", b"pw"));
        assert!(!table.check("alice", b"px"));
        assert!(!table.check("bob", b"pw"));
        assert!(!table.check("carol", b"pw"));
    }

    /// Prints what one verify costs at the default count (run with
    /// `--ignored --nocapture`, in release, to choose DEFAULT_ITERATIONS).
    #[test]
    #[ignore]
    fn measure_verify_cost() {
        let h = PasswordHash::new("pw", iterations(DEFAULT_ITERATIONS)).unwrap();
        let start = std::time::Instant::now();
        let n = 20;
        for _ in 0..n {
            assert!(h.verify(b"pw"));
        }
        println!(
            "{DEFAULT_ITERATIONS} iterations: {:?} per verify",
            start.elapsed() / n
        );
    }
}
