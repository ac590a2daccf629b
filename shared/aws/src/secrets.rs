//! The relay's secrets from AWS Secrets Manager.
//!
//! On AWS the functions' environment holds no secret: `CRCR_SECRETS_ARN`
//! names a Secrets Manager secret whose `SecretString` is a JSON object
//!
//! ```json
//! {"webhook_secret": "...", "github_app_private_key": "-----BEGIN ...", "hud_bot_key": "..."}
//! ```
//!
//! Each Lambda reads it once at start-up ([`process_env_with_secrets`]) and
//! keeps the values in its configuration for the life of the sandbox. The
//! values are layered over the process environment (no `set_var`): each key
//! present in the secret fills its variable ([`SECRET_KEYS`]) and wins over
//! that variable and its `_FILE` form; a key absent from the secret falls
//! through to the process environment, so a missing `webhook_secret` is
//! reported by the configuration as `CRCR_WEBHOOK_SECRET ... required`.
//! Other keys are ignored.
//!
//! The Python relay's secret can be used as it is: its key names
//! ([`SECRET_KEY_ALIASES`]: `GITHUB_APP_SECRET`, `GITHUB_APP_PRIVATE_KEY`,
//! `HUD_BOT_KEY`) are read for a value whose crcr key is absent. When both
//! names are present, crcr's own key wins and the alias is not read at all
//! (docs/MIGRATING.md).
//!
//! Rotating the webhook secret: `webhook_secret` may also be a list of one
//! or two strings, the current secret and the next (`{"webhook_secret":
//! ["current", "next"]}`); it then fills `CRCR_WEBHOOK_SECRETS` (comma-joined,
//! so no entry may contain a comma) and hides `CRCR_WEBHOOK_SECRET` and its
//! `_FILE` form, as a string hides `CRCR_WEBHOOK_SECRETS`
//! ([`crcr_core::config::webhook_secret_from_env`], docs/RUNBOOK.md "Rotating
//! the webhook secret").
//!
//! Without `CRCR_SECRETS_ARN` nothing is fetched and the environment is used
//! as it is (`crcr serve`, tests).
//!
//! No value is ever logged or put in an error message: errors name the ARN
//! and the key, and parse errors give only a line and column.

use std::collections::HashMap;

use aws_config::SdkConfig;
use secrecy::{ExposeSecret, SecretString};

use crcr_core::config::Env;

/// The variable naming the secret (an ARN, or a name in the same account).
pub const SECRETS_ARN_VAR: &str = "CRCR_SECRETS_ARN";

/// JSON key in the secret → the variable it fills.
pub const SECRET_KEYS: &[(&str, &str)] = &[
    ("webhook_secret", "CRCR_WEBHOOK_SECRET"),
    ("github_app_private_key", "CRCR_GITHUB_APP_PRIVATE_KEY"),
    ("hud_bot_key", "CRCR_HUD_BOT_KEY"),
];

/// The Python relay's JSON key → crcr's key for the same value. Source:
/// pytorch/test-infra `aws/lambda/cross_repo_ci_relay/utils/config.py`
/// (`RelaySecrets.from_aws`, which also reads `REDIS_LOGIN`: crcr has no
/// Redis, so that key is ignored). An alias is read only when crcr's own key
/// is absent from the secret; its value is checked the same way (a
/// non-empty string).
pub const SECRET_KEY_ALIASES: &[(&str, &str)] = &[
    ("GITHUB_APP_SECRET", "webhook_secret"),
    ("GITHUB_APP_PRIVATE_KEY", "github_app_private_key"),
    ("HUD_BOT_KEY", "hud_bot_key"),
];

/// The variables of one setting: when the secret fills one of them, the
/// others read as unset (the single webhook secret, its file form, and the
/// rotation list).
const WEBHOOK_SECRET_VARS: [&str; 3] = ["CRCR_WEBHOOK_SECRET", "CRCR_WEBHOOK_SECRET_FILE", "CRCR_WEBHOOK_SECRETS"];

/// The variable a list of webhook secrets in the secret fills.
const WEBHOOK_SECRETS_VAR: &str = "CRCR_WEBHOOK_SECRETS";

/// `webhook_secret` given as a list (a rotation): its entries comma-joined
/// for [`WEBHOOK_SECRETS_VAR`]. The error names the key and the entry,
/// never a value.
fn webhook_secret_list(key: &str, items: &[serde_json::Value]) -> Result<String, String> {
    let max = crcr_core::config::MAX_WEBHOOK_SECRETS;
    if items.is_empty() || items.len() > max {
        return Err(format!("key {key:?} lists {} secrets; give 1 to {max} (the current and the next)", items.len()));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item {
            serde_json::Value::String(s) if s.trim().is_empty() => {
                return Err(format!("key {key:?} entry {} is empty", i + 1))
            }
            serde_json::Value::String(s) if s.contains(',') => {
                return Err(format!("key {key:?} entry {} contains a comma", i + 1))
            }
            serde_json::Value::String(s) => out.push(s.trim()),
            _ => return Err(format!("key {key:?} entry {} is not a string", i + 1)),
        }
    }
    Ok(out.join(","))
}

/// Why the secret could not be used. Never contains a secret value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{SECRETS_ARN_VAR} {arn}: cannot read the secret: {reason}")]
    Fetch { arn: String, reason: String },
    #[error("{SECRETS_ARN_VAR} {arn}: {problem}")]
    Shape { arn: String, problem: String },
}

/// Values read from the secret, by the variable they fill. `Debug` prints
/// the variable names only.
#[derive(Default)]
pub struct Secrets {
    values: HashMap<&'static str, SecretString>,
    /// Variable → the JSON key its value came from (crcr's or an alias).
    keys: HashMap<&'static str, &'static str>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.values.keys().collect();
        names.sort();
        f.debug_struct("Secrets").field("variables", &names).finish_non_exhaustive()
    }
}

impl Secrets {
    /// Parses a `SecretString`: a JSON object whose known keys
    /// ([`SECRET_KEYS`], or when one is absent its Python relay alias from
    /// [`SECRET_KEY_ALIASES`]) have non-empty string values. The error
    /// names the key and never quotes the input.
    pub fn parse(secret_string: &str) -> Result<Self, String> {
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(secret_string).map_err(|e| {
            format!(
                "the secret string is not a JSON object of strings ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            )
        })?;
        let mut values = HashMap::new();
        let mut keys = HashMap::new();
        for (own, var) in SECRET_KEYS {
            let alias = SECRET_KEY_ALIASES.iter().find(|(_, k)| k == own).map(|(alias, _)| *alias);
            let Some((key, value)) =
                std::iter::once(*own).chain(alias).find_map(|key| object.get(key).map(|value| (key, value)))
            else {
                continue;
            };
            match value {
                serde_json::Value::Array(items) if key == "webhook_secret" => {
                    let joined = webhook_secret_list(key, items)?;
                    values.insert(WEBHOOK_SECRETS_VAR, SecretString::from(joined));
                    keys.insert(*var, key);
                }
                serde_json::Value::String(s) if !s.trim().is_empty() => {
                    values.insert(*var, SecretString::from(s.clone()));
                    keys.insert(*var, key);
                }
                serde_json::Value::String(_) => return Err(format!("key {key:?} is empty")),
                _ => return Err(format!("key {key:?} is not a string")),
            }
        }
        Ok(Self { values, keys })
    }

    /// The value for `var` (e.g. `CRCR_WEBHOOK_SECRET`), if the secret had it.
    pub fn get(&self, var: &str) -> Option<&SecretString> {
        self.values.get(var)
    }

    /// The JSON keys the secret provided, in [`SECRET_KEYS`] order, each as
    /// written in the secret (crcr's name, or the Python relay's alias it
    /// was read from); for a start-up log line.
    pub fn keys(&self) -> Vec<&'static str> {
        SECRET_KEYS.iter().filter_map(|(_, var)| self.keys.get(var).copied()).collect()
    }

    /// No value was read (no `CRCR_SECRETS_ARN`, or no known key in it).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `fallback` with these values over it: a variable the secret fills
    /// reads from the secret, and its `_FILE` form reads as unset (so the two
    /// never conflict; likewise the other forms of the webhook secret,
    /// `WEBHOOK_SECRET_VARS`); everything else reads from `fallback`.
    pub fn layer<'a>(self, fallback: Env<'a>) -> Env<'a> {
        Env::new(move |key| {
            if let Some(v) = self.values.get(key) {
                return Some(v.expose_secret().to_owned());
            }
            if key.strip_suffix("_FILE").is_some_and(|var| self.values.contains_key(var)) {
                return None;
            }
            if WEBHOOK_SECRET_VARS.contains(&key) && WEBHOOK_SECRET_VARS.iter().any(|v| self.values.contains_key(v)) {
                return None;
            }
            fallback.opt(key)
        })
    }
}

/// Reads and parses the secret `arn` (one `GetSecretValue`).
pub async fn fetch(client: &aws_sdk_secretsmanager::Client, arn: &str) -> Result<Secrets, SecretsError> {
    let out = client.get_secret_value().secret_id(arn).send().await.map_err(|e| SecretsError::Fetch {
        arn: arn.to_owned(),
        // The SDK's error chain (service code and message, or the transport
        // failure); it carries no secret value.
        reason: aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
    })?;
    let Some(s) = out.secret_string() else {
        return Err(SecretsError::Shape {
            arn: arn.to_owned(),
            problem: "the secret has no SecretString (a binary secret is not supported)".into(),
        });
    };
    Secrets::parse(s).map_err(|problem| SecretsError::Shape { arn: arn.to_owned(), problem })
}

/// When `env` sets [`SECRETS_ARN_VAR`], fetches that secret through `sdk`'s
/// endpoint and region; otherwise returns no values without calling AWS.
pub async fn load(env: &Env<'_>, sdk: &SdkConfig) -> Result<Secrets, SecretsError> {
    let Some(arn) = env.opt(SECRETS_ARN_VAR) else {
        return Ok(Secrets::default());
    };
    let arn = arn.trim();
    let secrets = fetch(&aws_sdk_secretsmanager::Client::new(sdk), arn).await?;
    tracing::info!(secret = %arn, keys = ?secrets.keys(), "read the relay's secret");
    Ok(secrets)
}

/// Lambda start-up: the process environment, with the secret named by
/// `CRCR_SECRETS_ARN` (if set) layered over it. Call once, before reading
/// the configuration.
pub async fn process_env_with_secrets(sdk: &SdkConfig) -> Result<Env<'static>, SecretsError> {
    let secrets = load(&Env::process(), sdk).await?;
    Ok(secrets.layer(Env::process()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crcr_core::config::{IngestConfig, RelayConfig};

    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBg\n-----END PRIVATE KEY-----";

    fn map_env(vars: &[(&str, &str)]) -> Env<'static> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Env::new(move |k| map.get(k).cloned())
    }

    #[test]
    fn parse_errors_never_quote_the_secret() {
        for (input, problem) in [
            ("hunter2-not-json", "not a JSON object"),
            (r#"["hunter2"]"#, "not a JSON object"),
            (r#"{"webhook_secret": 424242}"#, "\"webhook_secret\" is not a string"),
            (r#"{"webhook_secret": "  "}"#, "\"webhook_secret\" is empty"),
            (r#"{"webhook_secret": "hunter2""#, "not a JSON object"),
        ] {
            let e = Secrets::parse(input).unwrap_err();
            assert!(e.contains(problem), "{input}: {e}");
            assert!(!e.contains("hunter2") && !e.contains("424242"), "{e}");
        }
    }

    #[test]
    fn layered_values_win_and_hide_the_file_form() {
        let secrets = Secrets::parse(r#"{"webhook_secret": "from-secret", "other": 1}"#).unwrap();
        assert_eq!(secrets.keys(), ["webhook_secret"]);
        let dbg = format!("{secrets:?}");
        assert!(dbg.contains("CRCR_WEBHOOK_SECRET") && !dbg.contains("from-secret"), "{dbg}");
        let env = secrets.layer(map_env(&[
            ("CRCR_WEBHOOK_SECRET_FILE", "/nonexistent"),
            ("CRCR_GITHUB_APP_PRIVATE_KEY_FILE", "/key.pem"),
            ("CRCR_UPSTREAM_REPO", "Codertocat/Hello-World"),
        ]));
        assert_eq!(env.opt("CRCR_WEBHOOK_SECRET").as_deref(), Some("from-secret"));
        assert_eq!(env.opt("CRCR_WEBHOOK_SECRET_FILE"), None);
        // not in the secret: the process environment answers
        assert_eq!(env.opt("CRCR_GITHUB_APP_PRIVATE_KEY_FILE").as_deref(), Some("/key.pem"));
        let cfg = IngestConfig::from_env(&env).unwrap();
        assert_eq!(cfg.upstream.as_str(), "Codertocat/Hello-World");
    }

    /// The Python relay's secret (`GITHUB_APP_SECRET`, `GITHUB_APP_PRIVATE_KEY`,
    /// `REDIS_LOGIN`, `HUD_BOT_KEY`) works as it is.
    #[test]
    fn the_python_relays_key_names_are_read_as_aliases() {
        let python = serde_json::json!({
            "GITHUB_APP_SECRET": "py-webhook",
            "GITHUB_APP_PRIVATE_KEY": KEY,
            "REDIS_LOGIN": "default:pw",
            "HUD_BOT_KEY": "py-hud",
        })
        .to_string();
        let secrets = Secrets::parse(&python).unwrap();
        assert_eq!(secrets.keys(), ["GITHUB_APP_SECRET", "GITHUB_APP_PRIVATE_KEY", "HUD_BOT_KEY"]);
        let env = secrets.layer(map_env(&[("CRCR_GITHUB_APP_ID", "42"), ("CRCR_ALLOWLIST_FILE", "allowlist.yml")]));
        assert_eq!(env.opt("CRCR_WEBHOOK_SECRET").as_deref(), Some("py-webhook"));
        assert_eq!(env.opt("CRCR_HUD_BOT_KEY").as_deref(), Some("py-hud"));
        let cfg = RelayConfig::from_env(&env).unwrap();
        assert_eq!(cfg.github.private_key_pem.expose_secret(), KEY);
        assert_eq!(env.opt("REDIS_LOGIN"), None, "no Redis in crcr: ignored");
    }

    /// crcr's own key wins over the alias; the alias is then not even checked.
    #[test]
    fn crcrs_own_key_wins_over_the_alias() {
        let both = r#"{"webhook_secret": "crcr", "GITHUB_APP_SECRET": "python",
                       "hud_bot_key": "crcr-hud", "HUD_BOT_KEY": 7, "GITHUB_APP_PRIVATE_KEY": "pem"}"#;
        let secrets = Secrets::parse(both).unwrap();
        assert_eq!(secrets.keys(), ["webhook_secret", "GITHUB_APP_PRIVATE_KEY", "hud_bot_key"]);
        assert_eq!(secrets.get("CRCR_WEBHOOK_SECRET").unwrap().expose_secret(), "crcr");
        assert_eq!(secrets.get("CRCR_HUD_BOT_KEY").unwrap().expose_secret(), "crcr-hud");
        assert_eq!(secrets.get("CRCR_GITHUB_APP_PRIVATE_KEY").unwrap().expose_secret(), "pem");
        // An alias that is read is checked like crcr's key, and named in the error.
        let e = Secrets::parse(r#"{"GITHUB_APP_SECRET": ""}"#).unwrap_err();
        assert!(e.contains("\"GITHUB_APP_SECRET\" is empty"), "{e}");
        let e = Secrets::parse(r#"{"HUD_BOT_KEY": 424242}"#).unwrap_err();
        assert!(e.contains("\"HUD_BOT_KEY\" is not a string") && !e.contains("424242"), "{e}");
    }

    /// A rotation in the secret: `webhook_secret` as a list fills
    /// `CRCR_WEBHOOK_SECRETS` and hides the single forms; a bad list is an
    /// error naming the key and entry, never a value.
    #[test]
    fn webhook_secret_as_a_list_is_a_rotation() {
        let secrets = Secrets::parse(r#"{"webhook_secret": ["current", "next"]}"#).unwrap();
        assert_eq!(secrets.keys(), ["webhook_secret"]);
        let env = secrets.layer(map_env(&[("CRCR_WEBHOOK_SECRET", "stale-env"), ("CRCR_WEBHOOK_SECRET_FILE", "/x")]));
        assert_eq!(env.opt("CRCR_WEBHOOK_SECRETS").as_deref(), Some("current,next"));
        assert_eq!((env.opt("CRCR_WEBHOOK_SECRET"), env.opt("CRCR_WEBHOOK_SECRET_FILE")), (None, None));
        let cfg = IngestConfig::from_env(&env).unwrap();
        let body = b"{}";
        let next = crcr_core::signature::WebhookSecret::new("next").sign(body);
        assert_eq!(cfg.webhook_secret.verify_index(Some(next.as_bytes()), body), Ok(1));
        // A string hides a list left in the process environment.
        let env =
            Secrets::parse(r#"{"webhook_secret": "only"}"#).unwrap().layer(map_env(&[("CRCR_WEBHOOK_SECRETS", "a,b")]));
        assert_eq!(IngestConfig::from_env(&env).unwrap().webhook_secret.len(), 1);
        for (input, problem) in [
            (r#"{"webhook_secret": []}"#, "\"webhook_secret\" lists 0 secrets; give 1 to 2"),
            (r#"{"webhook_secret": ["a1", "b2", "c3"]}"#, "\"webhook_secret\" lists 3 secrets"),
            (r#"{"webhook_secret": ["hunter2", " "]}"#, "\"webhook_secret\" entry 2 is empty"),
            (r#"{"webhook_secret": ["hun,ter2"]}"#, "\"webhook_secret\" entry 1 contains a comma"),
            (r#"{"webhook_secret": ["hunter2", 424242]}"#, "\"webhook_secret\" entry 2 is not a string"),
            (r#"{"GITHUB_APP_SECRET": ["hunter2"]}"#, "\"GITHUB_APP_SECRET\" is not a string"),
        ] {
            let e = Secrets::parse(input).unwrap_err();
            assert!(e.contains(problem), "{input}: {e}");
            assert!(!e.contains("hunter2") && !e.contains("424242") && !e.contains("ter2"), "{e}");
        }
    }

    #[tokio::test]
    async fn without_an_arn_nothing_is_fetched() {
        // An endpoint nothing listens on: a call would fail.
        let sdk = crate::sdk_config(Some("http://127.0.0.1:9")).await;
        let secrets = load(&map_env(&[("CRCR_WEBHOOK_SECRET", "x")]), &sdk).await.unwrap();
        assert!(secrets.is_empty());
    }

    // Against moto's Secrets Manager (CRCR_TEST_MOTO_URL, started by
    // scripts/test). Like the adapter contract suite, this fails when moto
    // does not answer; it never skips.
    fn moto_url() -> String {
        std::env::var("CRCR_TEST_MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".to_owned())
    }

    async fn moto() -> (SdkConfig, aws_sdk_secretsmanager::Client) {
        let sdk = crate::sdk_config(Some(&moto_url())).await;
        // moto accepts any credentials; don't let the chain wander off to IMDS.
        let sdk = if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
            sdk
        } else {
            use aws_sdk_secretsmanager::config::{Credentials, SharedCredentialsProvider};
            let creds = Credentials::new("test", "test", None, None, "crcr-secrets-test");
            sdk.to_builder().credentials_provider(SharedCredentialsProvider::new(creds)).build()
        };
        let client = aws_sdk_secretsmanager::Client::new(&sdk);
        (sdk, client)
    }

    /// Creates a uniquely named secret; returns (ARN, name).
    async fn create_secret(client: &aws_sdk_secretsmanager::Client, value: &str) -> (String, String) {
        let name = format!("crcr/test-{}", uuid::Uuid::new_v4().simple());
        let out = client.create_secret().name(&name).secret_string(value).send().await.unwrap_or_else(|e| {
            panic!(
                "moto at {} did not answer CreateSecret ({}); start it with scripts/test \
                 or point CRCR_TEST_MOTO_URL at a running one",
                moto_url(),
                aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
            )
        });
        (out.arn().expect("CreateSecret returns the ARN").to_owned(), name)
    }

    #[tokio::test]
    async fn reads_the_secret_from_secrets_manager_on_moto() {
        let (sdk, client) = moto().await;
        let value = serde_json::json!({
            "webhook_secret": "moto-webhook-secret",
            "github_app_private_key": KEY,
            "hud_bot_key": "moto-hud-key",
        })
        .to_string();
        let (arn, name) = create_secret(&client, &value).await;

        let process =
            map_env(&[(SECRETS_ARN_VAR, &arn), ("CRCR_GITHUB_APP_ID", "42"), ("CRCR_ALLOWLIST_FILE", "allowlist.yml")]);
        let secrets = load(&process, &sdk).await.unwrap();
        assert_eq!(secrets.keys(), ["webhook_secret", "github_app_private_key", "hud_bot_key"]);
        assert_eq!(secrets.get("CRCR_HUD_BOT_KEY").unwrap().expose_secret(), "moto-hud-key");
        let env = secrets.layer(process);

        // The configuration the dispatcher loads now has the secret's values.
        let cfg = RelayConfig::from_env(&env).unwrap();
        assert_eq!(cfg.github.private_key_pem.expose_secret(), KEY);
        let body = br#"{"zen": "Keep it logically awesome."}"#;
        let sig = {
            use hmac::Mac;
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"moto-webhook-secret").unwrap();
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        };
        cfg.webhook_secret.verify(Some(sig.as_bytes()), body).unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("moto-webhook-secret") && !dbg.contains("MIIBVQ"), "{dbg}");

        // By name as well as by ARN (the Terraform passes the ARN).
        assert_eq!(fetch(&client, &name).await.unwrap().keys().len(), 3);
    }

    #[tokio::test]
    async fn a_missing_or_malformed_secret_stops_start_up_without_its_value() {
        let (sdk, client) = moto().await;
        let missing =
            format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:crcr/none-{}", uuid::Uuid::new_v4());
        let e = load(&map_env(&[(SECRETS_ARN_VAR, &missing)]), &sdk).await.unwrap_err();
        assert!(matches!(e, SecretsError::Fetch { .. }), "{e}");
        assert!(e.to_string().contains(SECRETS_ARN_VAR) && e.to_string().contains(&missing), "{e}");

        let (arn, _) = create_secret(&client, r#"{"webhook_secret": 8675309}"#).await;
        let e = load(&map_env(&[(SECRETS_ARN_VAR, &arn)]), &sdk).await.unwrap_err();
        assert!(matches!(e, SecretsError::Shape { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("\"webhook_secret\" is not a string") && !msg.contains("8675309"), "{msg}");

        // A secret without webhook_secret: the configuration names the variable.
        let (arn, _) = create_secret(&client, r#"{"hud_bot_key": "k"}"#).await;
        let env = load(&map_env(&[(SECRETS_ARN_VAR, &arn)]), &sdk).await.unwrap().layer(map_env(&[]));
        let e = IngestConfig::from_env(&env).unwrap_err();
        assert_eq!(e.key, "CRCR_WEBHOOK_SECRET", "{e}");
    }
}
