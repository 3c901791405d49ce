//! Exit codes of `tern pub` and `tern sub`, and the one-line messages that go
//! with them. Scripts can tell the causes apart without parsing text.

use std::process::ExitCode;

use tern_client::Error;

/// Documented in `--help` of each tool and in the README.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  error (unreadable file, invalid input)
  2  invalid command line
  3  broker unreachable
  4  connection refused by the broker (CONNACK reason)
  5  timed out
  6  publish or subscription refused by the broker
  7  connection lost";

/// Why a tool failed; each maps to one exit code.
#[derive(Debug)]
pub enum Failure {
    /// Anything else: bad input, unreadable file.
    Other(String),
    /// The command line asks for something impossible (what clap cannot
    /// check): exit code 2, as for clap's own errors.
    Usage(String),
    Unreachable(String),
    Refused(String),
    Timeout(String),
    /// A PUBACK/PUBREC or SUBACK carried a failure reason code.
    Rejected(String),
    Lost(String),
}

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Failure::Other(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Unreachable(_) => 3,
            Failure::Refused(_) => 4,
            Failure::Timeout(_) => 5,
            Failure::Rejected(_) => 6,
            Failure::Lost(_) => 7,
        }
    }

    /// The one-line explanation, without the tool's name.
    pub fn message(&self) -> &str {
        match self {
            Failure::Other(m)
            | Failure::Usage(m)
            | Failure::Unreachable(m)
            | Failure::Refused(m)
            | Failure::Timeout(m)
            | Failure::Rejected(m)
            | Failure::Lost(m) => m,
        }
    }

    /// Prints the message on stderr and returns the exit code.
    pub fn report(&self, tool: &str) -> ExitCode {
        eprintln!("{tool}: {}", self.message());
        ExitCode::from(self.code())
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let text = e.to_string();
        match e {
            Error::Unreachable { .. } => Failure::Unreachable(format!(
                "{text} (is a broker running there? check -h and -p)"
            )),
            Error::Tls { .. } | Error::TlsPort { .. } => Failure::Unreachable(text),
            Error::Refused(_) => Failure::Refused(text),
            Error::Timeout(_) => Failure::Timeout(text),
            Error::Closed(_) => Failure::Lost(text),
            // Protocol, Invalid, TlsSetup, and any kind a later client adds
            // (QueueFull cannot happen: the tools never use try_publish).
            _ => Failure::Other(text),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Other(e.to_string())
    }
}
