//! One typed [`Config`], loaded once: embedded defaults, then an optional TOML file
//! (`--config` / `SHOPLOG_CONFIG`), then `SHOPLOG_*` environment variables, then
//! command-line flags. A bad value names its key and where it came from.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A secret: its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Everything `shoplog serve` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The data directory (the log and the read models).
    pub data: PathBuf,
    pub listen: SocketAddr,
    /// The admin's bearer token; generated into `<data>/admin-token` when unset.
    pub admin_token: Option<Secret>,
    /// The dashboards' read-only token; generated into `<data>/viewer-token` when unset.
    pub viewer_token: Option<Secret>,
    /// What read replicas (`shoplog project --token`) give to fill a gap from this
    /// server's log: it reads the records as stored (`GET /api/v1/events` asked
    /// for them) and nothing else. Unset, only the admin token does.
    pub replica_token: Option<Secret>,
    /// Signs customer tokens; generated into the data dir when unset, so a read
    /// replica given the same value accepts the same tokens.
    pub token_secret: Option<Secret>,
    /// How long a request may take in all.
    pub request_timeout_ms: u64,
    /// How long a client may take to send its request headers (slow-loris guard).
    pub header_read_timeout_ms: u64,
    /// How long a graceful shutdown waits for requests in flight.
    pub shutdown_timeout_ms: u64,
    /// How long a command keeps deciding again after a version conflict with a
    /// concurrent one before it answers 409 (contention).
    pub command_retry_ms: u64,
    /// Login attempts allowed per email from one client address per minute (ten
    /// times as many per email from all addresses, and per client address).
    pub login_attempts_per_minute: u32,
    /// The addresses of the reverse proxies in front of the server, comma-separated
    /// (`127.0.0.1, ::1`): a request from one of them is counted, for the limits per
    /// client address, as from the address its `X-Forwarded-For` names last that is
    /// not a proxy's. Unset, the header is ignored (any client could write it).
    pub trusted_proxies: Option<String>,
    /// Seed a demo shop into an empty log on start (`serve --demo`); a log that
    /// holds events is left as it is.
    pub demo: bool,
    /// sled's page cache, in MiB: what bounds the memory the log takes however
    /// long it grows (see docs/BENCHMARKS.md, the read side).
    pub cache_mib: u64,
    /// The ISO 4217 code of the shop's one currency (DESIGN §5), named beside
    /// every amount the read routes answer. The log holds cents only: change it
    /// only with the prices.
    pub currency: String,
    /// The NATS server the relay publishes every event to (DESIGN §4), such as
    /// `nats://127.0.0.1:4222`; unset, nothing leaves the process (the embedded
    /// default).
    pub nats: Option<String>,
    /// A read replica's primary (`shoplog project --primary`), which fills the
    /// positions NATS lacks; `serve` refuses it. Its environment variable is
    /// `SHOPLOG_PRIMARY`, read as a flag.
    pub primary: Option<String>,
    /// The primary's replica or admin token (`project --token`, or
    /// `SHOPLOG_TOKEN` as every command that talks to a server reads it).
    pub primary_token: Option<Secret>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: PathBuf::from("./data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token: None,
            viewer_token: None,
            replica_token: None,
            token_secret: None,
            request_timeout_ms: 10_000,
            header_read_timeout_ms: 5_000,
            shutdown_timeout_ms: 10_000,
            command_retry_ms: commands::Options::default().retry_deadline.as_millis() as u64,
            login_attempts_per_minute: 10,
            trusted_proxies: None,
            demo: false,
            cache_mib: store::Options::default().cache_capacity_bytes / MIB,
            currency: "USD".to_owned(),
            nats: None,
            primary: None,
            primary_token: None,
        }
    }
}

/// The keys read from `SHOPLOG_<KEY>`.
pub(crate) const ENV_KEYS: [&str; 16] = [
    "data",
    "listen",
    "admin_token",
    "viewer_token",
    "replica_token",
    "token_secret",
    "request_timeout_ms",
    "header_read_timeout_ms",
    "shutdown_timeout_ms",
    "command_retry_ms",
    "login_attempts_per_minute",
    "trusted_proxies",
    "demo",
    "cache_mib",
    "currency",
    "nats",
];

const MIB: u64 = 1024 * 1024;

/// The largest page cache taken: 1 TiB, far past any machine's memory, and far
/// below an overflow of the bytes it stands for.
const CACHE_MIB_MAX: u64 = 1024 * 1024;

impl Config {
    /// Layer the sources; `flags` holds only what was given on the command line.
    pub fn load(file: Option<&std::path::Path>, flags: impl Serialize) -> Result<Config, String> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(format!("config file {} does not exist", file.display()));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment
            .merge(Env::prefixed("SHOPLOG_").only(&ENV_KEYS).ignore(&TEXT_KEYS))
            .merge(TextEnv(Env::prefixed("SHOPLOG_").only(&TEXT_KEYS)))
            .merge(Flags(flags));
        let config: Config = figment.extract().map_err(|error| one_line(&error))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        for (key, value) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("shutdown_timeout_ms", self.shutdown_timeout_ms),
            ("command_retry_ms", self.command_retry_ms),
        ] {
            if value == 0 {
                return Err(format!("{key} must be above 0"));
            }
        }
        if !(1..=CACHE_MIB_MAX).contains(&self.cache_mib) {
            return Err(format!("cache_mib must be from 1 to {CACHE_MIB_MAX}"));
        }
        if !(self.currency.len() == 3 && self.currency.bytes().all(|byte| byte.is_ascii_uppercase())) {
            return Err("currency must be an ISO 4217 code: three capital letters, such as USD".to_owned());
        }
        if self.login_attempts_per_minute == 0 {
            return Err("login_attempts_per_minute must be above 0".to_owned());
        }
        self.trusted_proxies()?;
        let tokens = [
            ("admin_token", &self.admin_token),
            ("viewer_token", &self.viewer_token),
            ("replica_token", &self.replica_token),
            ("primary_token", &self.primary_token),
        ];
        for (key, token) in tokens {
            if let Some(problem) = token.as_ref().and_then(|token| token_problem(token.expose())) {
                return Err(format!("{key} {problem}"));
            }
        }
        if let Some(replica) = &self.replica_token
            && [&self.admin_token, &self.viewer_token].into_iter().flatten().any(|other| other == replica)
        {
            return Err("replica_token must differ from admin_token and viewer_token".to_owned());
        }
        if let (Some(admin), Some(viewer)) = (&self.admin_token, &self.viewer_token)
            && admin.expose() == viewer.expose()
        {
            // The admin's would win: the viewer token would be an admin's.
            return Err("viewer_token must differ from admin_token".to_owned());
        }
        if self.token_secret.as_ref().is_some_and(|secret| secret.expose().len() < 32) {
            return Err("token_secret must be at least 32 characters".to_owned());
        }
        if let Some(url) = &self.nats
            && let Err(problem) = commands::relay::check_url(url)
        {
            return Err(format!("nats must be a NATS server's URL, such as nats://127.0.0.1:4222 ({problem})"));
        }
        match (&self.primary, &self.primary_token) {
            (Some(_), None) => return Err("primary needs primary_token (--token T), a token of the primary".to_owned()),
            (None, Some(_)) => {
                return Err("primary_token is the primary's: give primary (--primary URL) with it".to_owned());
            }
            (Some(url), Some(_)) => {
                let shown = commands::relay::shown(url);
                let parsed = reqwest::Url::parse(url).map_err(|_| format!("primary {shown} is not a URL"))?;
                if parsed.scheme() != "http" {
                    return Err(format!("primary {shown}: only http:// URLs are supported"));
                }
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// The addresses of `trusted_proxies` (none when unset), canonical (an
    /// IPv4-mapped IPv6 address as its IPv4 one).
    pub fn trusted_proxies(&self) -> Result<Vec<std::net::IpAddr>, String> {
        let Some(list) = &self.trusted_proxies else { return Ok(Vec::new()) };
        let addresses = list.split(',').map(str::trim).filter(|address| !address.is_empty());
        addresses
            .map(|address| {
                address.parse().map(|address: std::net::IpAddr| address.to_canonical()).map_err(|_| {
                    format!(
                        "trusted_proxies: {address} is not an IP address (give the proxies' addresses, \
                         comma-separated, such as 127.0.0.1, ::1)"
                    )
                })
            })
            .collect()
    }

    /// The primary that fills a read replica's gaps, if one is set.
    pub fn primary(&self) -> Option<crate::replica::Primary> {
        let (url, token) = (self.primary.clone()?, self.primary_token.clone()?);
        Some(crate::replica::Primary { url, token })
    }

    /// The log's options: sled's page cache as configured, the rest as the shop's
    /// (its upcasters) and the store's defaults.
    pub fn log_options(&self) -> store::Options {
        store::Options { cache_capacity_bytes: self.cache_mib * MIB, ..commands::codec::log_options() }
    }

    /// The command service's options: the retry deadline as configured, the rest
    /// as its defaults.
    pub fn command_options(&self) -> commands::Options {
        commands::Options {
            retry_deadline: Duration::from_millis(self.command_retry_ms),
            ..commands::Options::default()
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

/// The settings that are text (a path, an address, a token, a code): read from
/// the environment as they are. figment's `Env` reads a value as the type it
/// looks like, so `SHOPLOG_DATA=2024` was a number, which no path deserializes
/// from, and a token of digits only was one too.
const TEXT_KEYS: [&str; 9] = [
    "data",
    "listen",
    "admin_token",
    "viewer_token",
    "replica_token",
    "token_secret",
    "currency",
    "nats",
    "trusted_proxies",
];

/// `value` without one pair of double quotes around the whole of it, if it has
/// them: how every text setting is read from the environment (a line of an
/// environment file written `SHOPLOG_DATA="/srv/shop"` may reach the process
/// with its quotes), by `serve` and by the operator commands alike.
pub fn unquoted(value: &str) -> &str {
    value.strip_prefix('"').and_then(|value| value.strip_suffix('"')).unwrap_or(value)
}

/// The `SHOPLOG_*` variables of [`TEXT_KEYS`], each a string. A value in double
/// quotes is the text between them, as figment read it (and as the hint for a
/// token of digits once said to write it).
struct TextEnv(Env);

impl figment::Provider for TextEnv {
    fn metadata(&self) -> figment::Metadata {
        // `Env`'s: errors name the variable (`SHOPLOG_DATA`), not the key.
        self.0.metadata()
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let text = |value: String| unquoted(&value).to_owned();
        let dict = self
            .0
            .iter()
            .map(|(key, value)| (key.as_str().to_owned(), figment::value::Value::from(text(value))))
            .collect();
        Ok(figment::Profile::Default.collect(dict))
    }
}

const FLAGS_SOURCE: &str = "command-line flags";

/// The flags given on the command line, named so in errors (figment would name
/// the Rust type they were read into).
struct Flags<T>(T);

impl<T: Serialize> figment::Provider for Flags<T> {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(FLAGS_SOURCE)
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Serialized::defaults(&self.0).data()
    }
}

/// The settings that hold secrets: an error about one never repeats its value.
const SECRET_KEYS: [&str; 4] = ["admin_token", "viewer_token", "replica_token", "token_secret"];

/// figment's error on one line, naming the key and its source. A TOML parse
/// error's excerpt of the file (its `N | …` lines and caret) is left out: it
/// spans lines, and the line may hold a secret.
fn one_line(error: &figment::Error) -> String {
    let mut parts = Vec::new();
    for error in error.clone() {
        let path = error.path.join(".");
        let key = if path.is_empty() { String::new() } else { format!("{path}: ") };
        // The flag or the variable itself (`--listen`, `SHOPLOG_LISTEN`) where the
        // source is one of those; else the source (the file's path).
        let source = error.metadata.as_ref().map(|metadata| match metadata.name.as_ref() {
            FLAGS_SOURCE => format!(" (from --{})", path.replace('_', "-")),
            name if name.ends_with("environment variable(s)") => {
                format!(" (from SHOPLOG_{})", path.to_ascii_uppercase())
            }
            name => format!(" (from {name})"),
        });
        let source = source.unwrap_or_default();
        let kind = if SECRET_KEYS.contains(&path.as_str()) {
            "must be text (quote a token of digits only)".to_owned()
        } else {
            let text = error.kind.to_string();
            let excerpt = |line: &&str| {
                line.trim_start().trim_start_matches(|c: char| c.is_ascii_digit()).trim_start().starts_with('|')
            };
            text.lines()
                .filter(|line| !excerpt(line))
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(": ")
        };
        parts.push(format!("{key}{kind}{source}"));
    }
    parts.join("; ")
}

/// What is wrong with a bearer token, if anything: it must be at least 16
/// characters, printable ASCII (tabs allowed) with no space at either end, as an
/// `Authorization` header can carry it (a client could never send another).
pub(crate) fn token_problem(token: &str) -> Option<&'static str> {
    if token.len() < 16 {
        Some("must be at least 16 characters")
    } else if !token.bytes().all(|byte| byte == b'\t' || (b' '..=b'~').contains(&byte)) || token.trim() != token {
        Some("must be printable ASCII with no space at either end (it is sent in an Authorization header)")
    } else {
        None
    }
}

#[cfg(test)]
// figment::Jail's closures must return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_what_an_authorization_header_can_carry() {
        assert_eq!(token_problem("0123456789abcdef"), None);
        assert_eq!(token_problem("with inner spaces and\ta tab"), None, "a header value may hold both");
        assert_eq!(token_problem("0123456789abcde"), Some("must be at least 16 characters"));
        for bad in [" 0123456789abcdef", "0123456789abcdef ", "café-café-café-café", "0123456789abcdef\u{7}"] {
            assert!(token_problem(bad).is_some_and(|problem| problem.contains("printable ASCII")), "{bad:?}");
        }
    }

    #[derive(Serialize)]
    struct NoFlags {}

    #[test]
    fn defaults_run_without_any_setting() {
        figment::Jail::expect_with(|_| {
            let config = Config::load(None, NoFlags {}).expect("defaults load");
            assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
            assert!(config.admin_token.is_none());
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_its_key_and_source() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SHOPLOG_LISTEN", "not-an-address");
            let error = Config::load(None, NoFlags {}).expect_err("bad listen");
            assert!(error.contains("listen"), "{error}");
            assert!(error.contains("SHOPLOG_"), "{error}");
            assert!(!error.contains('\n'));
            Ok(())
        });
    }

    #[test]
    fn the_file_is_overridden_by_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("shoplog.toml", "listen = \"127.0.0.1:9000\"\nrequest_timeout_ms = 5\n")?;
            jail.set_env("SHOPLOG_REQUEST_TIMEOUT_MS", "7");
            let config = Config::load(Some(std::path::Path::new("shoplog.toml")), NoFlags {}).expect("loads");
            assert_eq!(config.listen.port(), 9000);
            assert_eq!(config.request_timeout_ms, 7);
            jail.create_file("bad.toml", "colour = \"blue\"\n")?;
            let error = Config::load(Some(std::path::Path::new("bad.toml")), NoFlags {}).expect_err("unknown key");
            assert!(error.contains("colour"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn the_command_retry_deadline_reaches_the_command_service_and_is_refused_at_zero() {
        figment::Jail::expect_with(|jail| {
            let default = Config::load(None, NoFlags {}).expect("defaults load");
            assert_eq!(default.command_options().retry_deadline, commands::Options::default().retry_deadline);
            jail.set_env("SHOPLOG_COMMAND_RETRY_MS", "250");
            let config = Config::load(None, NoFlags {}).expect("loads");
            assert_eq!(config.command_options().retry_deadline, Duration::from_millis(250));
            jail.set_env("SHOPLOG_COMMAND_RETRY_MS", "0");
            let error = Config::load(None, NoFlags {}).expect_err("zero");
            assert_eq!(error, "command_retry_ms must be above 0");
            Ok(())
        });
    }

    #[test]
    fn the_currency_is_usd_unless_set_and_must_be_three_capital_letters() {
        figment::Jail::expect_with(|jail| {
            assert_eq!(Config::load(None, NoFlags {}).expect("defaults load").currency, "USD");
            jail.set_env("SHOPLOG_CURRENCY", "EUR");
            assert_eq!(Config::load(None, NoFlags {}).expect("loads").currency, "EUR");
            for bad in ["eur", "EURO", "E1R", ""] {
                jail.set_env("SHOPLOG_CURRENCY", bad);
                let error = Config::load(None, NoFlags {}).expect_err("refused");
                assert!(error.starts_with("currency must be an ISO 4217 code"), "{bad}: {error}");
            }
            Ok(())
        });
    }

    #[test]
    fn the_page_cache_is_set_in_mib_and_refused_at_zero() {
        figment::Jail::expect_with(|jail| {
            let default = Config::load(None, NoFlags {}).expect("defaults load");
            assert_eq!(default.log_options().cache_capacity_bytes, store::Options::default().cache_capacity_bytes);
            jail.set_env("SHOPLOG_CACHE_MIB", "32");
            let config = Config::load(None, NoFlags {}).expect("loads");
            assert_eq!(config.log_options().cache_capacity_bytes, 32 * 1024 * 1024);
            jail.set_env("SHOPLOG_CACHE_MIB", "0");
            let error = Config::load(None, NoFlags {}).expect_err("zero");
            assert_eq!(error, format!("cache_mib must be from 1 to {CACHE_MIB_MAX}"));
            Ok(())
        });
    }

    /// A file that is not TOML is one line naming where, without the line itself
    /// (it may hold a token); a token of digits only is text in the environment,
    /// quoted or not, and in a file (where TOML makes it a number unless quoted)
    /// is refused without repeating it; a viewer token equal to the admin's is refused.
    #[test]
    fn bad_files_and_tokens_are_one_line_that_repeats_no_secret() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("broken.toml", "admin_token = s3cret-admin-token-xyz\n")?;
            let error = Config::load(Some(std::path::Path::new("broken.toml")), NoFlags {}).expect_err("not TOML");
            assert!(!error.contains('\n'), "{error}");
            assert!(error.contains("line 1"), "{error}");
            assert!(!error.contains("s3cret"), "{error}");

            jail.create_file("digits.toml", "admin_token = 1234567890123456789\n")?;
            let error = Config::load(Some(std::path::Path::new("digits.toml")), NoFlags {}).expect_err("a number");
            assert!(error.contains("admin_token") && !error.contains("1234567890123456789"), "{error}");

            for value in ["1234567890123456789", "\"1234567890123456789\""] {
                jail.set_env("SHOPLOG_ADMIN_TOKEN", value);
                let config = Config::load(None, NoFlags {}).expect("text from the environment");
                let token = config.admin_token.map(|token| token.expose().to_owned());
                assert_eq!(token.as_deref(), Some("1234567890123456789"), "{value}");
            }

            jail.set_env("SHOPLOG_ADMIN_TOKEN", "the-same-token-for-both");
            jail.set_env("SHOPLOG_VIEWER_TOKEN", "the-same-token-for-both");
            let error = Config::load(None, NoFlags {}).expect_err("equal tokens");
            assert_eq!(error, "viewer_token must differ from admin_token");
            Ok(())
        });
    }

    /// A path, an address or a currency is taken as the text it is: `2024` and
    /// `007` are directories, not numbers. A bad flag names the command line,
    /// not the type the flags were read into.
    #[test]
    fn text_settings_from_the_environment_stay_text_and_a_bad_flag_says_it_is_one() {
        figment::Jail::expect_with(|jail| {
            for dir in ["2024", "007"] {
                jail.set_env("SHOPLOG_DATA", dir);
                let config = Config::load(None, NoFlags {}).expect("a path of digits");
                assert_eq!(config.data, PathBuf::from(dir));
            }
            jail.set_env("SHOPLOG_LISTEN", "nonsense");
            let error = Config::load(None, NoFlags {}).expect_err("not an address");
            assert!(error.starts_with("listen: ") && error.ends_with("(from SHOPLOG_LISTEN)"), "{error}");

            #[derive(Serialize)]
            struct ListenFlag {
                listen: &'static str,
            }
            let error = Config::load(None, ListenFlag { listen: "nonsense" }).expect_err("not an address");
            assert!(error.ends_with("(from --listen)"), "{error}");
            assert!(!error.contains("ListenFlag"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn secrets_never_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2hunter2hunter2")), "[redacted]");
    }
}
