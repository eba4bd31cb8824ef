//! Client subcommands: every provider operation and every admin key operation against a
//! running server, with `--output json`.
//!
//! `keygate provider …` authenticates with the provider bearer token; `keygate admin …` logs in
//! to the admin console API with login name + password, does one operation (sending the
//! session's CSRF token on every write) and logs out again.
//!
//! Secrets given on the command line (token, passwords, a new key value) are held as
//! [`SecretString`], so a `Debug` print of the parsed arguments cannot show them. Nothing is
//! printed but what the server returned.

use std::fmt;
use std::io::{BufRead, Write};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::{Value, json};

mod operators;
pub use operators::{BootstrapCommand, OperatorsCommand, TokensCommand};

const DEFAULT_URL: &str = "http://127.0.0.1:8080";
const CSRF_HEADER: &str = "X-CSRF-Token";

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A short human summary.
    #[default]
    Text,
    /// The server's JSON body, pretty-printed.
    Json,
}

// ------------------------------------------------------------------------------ provider

#[derive(Args, Debug)]
pub struct ProviderArgs {
    /// Base URL of the keygate server.
    #[arg(long, env = "KEYGATE_URL", default_value = DEFAULT_URL, global = true)]
    pub url: String,
    /// Provider bearer token ("-" reads it from the first line of stdin).
    #[arg(
        long,
        env = "KEYGATE_PROVIDER_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<SecretString>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub command: ProviderCommand,
}

#[derive(Subcommand, Debug)]
pub enum ProviderCommand {
    /// Create, list and show organizations.
    #[command(subcommand)]
    Orgs(OrgsCommand),
    /// Enable, turn off, expire or renew an org's API subscription.
    #[command(subcommand)]
    Subscription(SubscriptionCommand),
    /// Disable or re-enable an org's API key.
    #[command(subcommand)]
    Key(ProviderKeyCommand),
    /// Add or remove an org's admins.
    #[command(subcommand)]
    Admins(AdminsCommand),
    /// Operators of the platform or of a partner (issue 15).
    #[command(subcommand)]
    Operators(OperatorsCommand),
    /// Personal bearer tokens: create, list, revoke, rotate.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// The bootstrap token (KEYGATE_PROVIDER_TOKEN / generated at first start).
    #[command(subcommand)]
    Bootstrap(BootstrapCommand),
    /// Create, list, show and edit partners (service providers).
    #[command(subcommand)]
    Partners(PartnersCommand),
    /// An org's audit records, newest first.
    Audit {
        /// Org id.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
        #[command(flatten)]
        page: PageArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum OrgsCommand {
    /// Onboard an org with its admins; an enabled subscription provisions its key.
    Create {
        /// Org name.
        #[arg(long)]
        name: String,
        /// An admin as LOGIN:PASSWORD:ROLE (ROLE is FULL or VIEW_ONLY); repeatable.
        #[arg(long = "admin", value_name = "LOGIN:PASSWORD:ROLE", value_parser = AdminSpec::parse)]
        admins: Vec<AdminSpec>,
        /// Whether the API subscription is enabled.
        #[arg(long, value_name = "true|false", action = clap::ArgAction::Set, default_value_t = true)]
        subscription_enabled: bool,
        /// When the subscription expires, Unix seconds (default: never).
        #[arg(long, value_name = "EPOCH_SECS")]
        expires_at: Option<i64>,
        /// At most CALLS API calls per PERIOD_SECS seconds; beyond it the key is disabled.
        #[arg(long, value_name = "CALLS/PERIOD_SECS", value_parser = parse_call_threshold)]
        call_threshold: Option<CallThreshold>,
        /// The partner that owns the new org (the platform only; default: the caller's tier).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        partner_id: Option<i64>,
    },
    /// Give an org to another partner, or to the platform (the platform's owners only).
    Move {
        /// Org id.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
        /// The new owner.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..), required_unless_present = "platform")]
        partner_id: Option<i64>,
        /// Give it to the platform instead.
        #[arg(long, conflicts_with = "partner_id")]
        platform: bool,
    },
    /// Set the cloud service API base URL an org's admins are shown.
    BaseUrl {
        /// Org id.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
        /// An absolute http(s) URL, shown as given.
        #[arg(long, required_unless_present = "clear")]
        base_url: Option<String>,
        /// Back to the deployment's base URL.
        #[arg(long, conflicts_with = "base_url")]
        clear: bool,
    },
    /// Orgs by id, paged.
    List {
        #[command(flatten)]
        page: PageArgs,
        /// Only orgs whose name contains this (case-insensitive).
        #[arg(long)]
        search: Option<String>,
    },
    /// One org, with its admins.
    Get {
        /// Org id.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum PartnersCommand {
    /// Create a partner (the platform's owners only).
    Create {
        #[arg(long)]
        name: String,
        /// Shown to its orgs with its disablement notice.
        #[arg(long)]
        support_url: Option<String>,
        #[arg(long)]
        support_email: Option<String>,
    },
    /// The partners you may see.
    List,
    /// One partner.
    Get {
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
    /// Replace a partner's name and contacts (the platform's owners only).
    Update {
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
        #[arg(long)]
        name: String,
        #[arg(long)]
        support_url: Option<String>,
        #[arg(long)]
        support_email: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SubscriptionCommand {
    /// Set the subscription: enabled or not, and when it expires.
    Set {
        /// Org id.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
        /// Whether the API subscription is enabled.
        #[arg(long, value_name = "true|false", action = clap::ArgAction::Set, required = true)]
        enabled: bool,
        /// When it expires, Unix seconds; a past time expires it now. Omitted: never expires.
        #[arg(long, value_name = "EPOCH_SECS")]
        expires_at: Option<i64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProviderKeyCommand {
    /// Disable the org's key: it stops working until the provider re-enables it.
    Disable {
        /// Org id.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
        #[arg(long, value_enum)]
        reason: DisableReason,
        /// Free text shown with the reason.
        #[arg(long)]
        note: Option<String>,
    },
    /// Re-enable the org's key.
    Enable {
        /// Org id.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum AdminsCommand {
    /// Add an admin to the org.
    Add {
        /// Org id.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
        /// Login name.
        #[arg(long)]
        login: String,
        /// Password ("-" reads it from the first line of stdin).
        #[arg(long)]
        password: SecretString,
        #[arg(long, value_enum)]
        role: Role,
    },
    /// Remove an admin; their console sessions end.
    Remove {
        /// Org id.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
        /// Admin id.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        admin_id: i64,
    },
}

#[derive(Args, Debug, Clone, Copy)]
pub struct PageArgs {
    /// 1-based page number (server default 1).
    #[arg(long)]
    pub page: Option<u32>,
    /// Items per page, 1 to 1000 (server default 100).
    #[arg(long)]
    pub page_size: Option<u32>,
}

impl PageArgs {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(p) = self.page {
            q.push(("page", p.to_string()));
        }
        if let Some(s) = self.page_size {
            q.push(("pageSize", s.to_string()));
        }
        q
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    Full,
    ViewOnly,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DisableReason {
    CallThresholdExceeded,
    TermsViolation,
    Other,
}

/// `--admin LOGIN:PASSWORD:ROLE`. Login names cannot hold `:`, roles neither, so the
/// password is everything between the first and the last colon (it may contain colons).
#[derive(Clone, Debug)]
pub struct AdminSpec {
    pub login: String,
    pub password: SecretString,
    pub role: Role,
}

impl AdminSpec {
    fn parse(s: &str) -> Result<AdminSpec, String> {
        const SHAPE: &str = "expected LOGIN:PASSWORD:ROLE with ROLE FULL or VIEW_ONLY";
        // Never echo the input back: it holds a password.
        let (login, rest) = s.split_once(':').ok_or(SHAPE)?;
        let (password, role) = rest.rsplit_once(':').ok_or(SHAPE)?;
        if login.is_empty() || password.is_empty() {
            return Err(SHAPE.into());
        }
        let role = Role::from_str(role, true).map_err(|_| SHAPE.to_string())?;
        Ok(AdminSpec {
            login: login.to_owned(),
            password: SecretString::from(password),
            role,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallThreshold {
    pub calls: i64,
    pub period_seconds: i64,
}

fn parse_call_threshold(s: &str) -> Result<CallThreshold, String> {
    const SHAPE: &str = "expected CALLS/PERIOD_SECS, e.g. 10000/3600";
    let (calls, period) = s.split_once('/').ok_or(SHAPE)?;
    let calls = i64::from_str(calls.trim()).map_err(|_| SHAPE.to_string())?;
    let period_seconds = i64::from_str(period.trim()).map_err(|_| SHAPE.to_string())?;
    Ok(CallThreshold {
        calls,
        period_seconds,
    })
}

// --------------------------------------------------------------------------------- admin

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// Base URL of the keygate server.
    #[arg(long, env = "KEYGATE_URL", default_value = DEFAULT_URL, global = true)]
    pub url: String,
    /// Admin login name.
    #[arg(long, env = "KEYGATE_ADMIN_LOGIN", global = true)]
    pub login: Option<String>,
    /// Admin password ("-" reads it from the first line of stdin).
    #[arg(
        long,
        env = "KEYGATE_ADMIN_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub password: Option<SecretString>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// The org's API key.
    #[command(subcommand)]
    Key(AdminKeyCommand),
    /// The org's audit records, newest first.
    Audit {
        #[command(flatten)]
        page: PageArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum AdminKeyCommand {
    /// Show the key (value masked), its status, base URL and last change.
    Show,
    /// Add a key (only when the org has none).
    Add,
    /// Replace the key with a value of your choosing (12 letters or digits).
    Edit {
        /// The new value ("-" reads it from the first line of stdin).
        #[arg(long)]
        value: SecretString,
    },
    /// Replace the key with a new random one; the old one stops working at once.
    Regenerate,
    /// Delete the key; the org has none until an admin adds one.
    Delete,
    /// Print the full key value (audited).
    Reveal,
}

// ------------------------------------------------------------------------------- running

pub async fn run_provider(args: ProviderArgs) -> anyhow::Result<()> {
    let token = args.token.as_ref().ok_or_else(|| {
        anyhow::anyhow!("no provider token: pass --token or set KEYGATE_PROVIDER_TOKEN")
    })?;
    let token = secret_or_stdin(token, "--token")?;
    let api = Api::new(&args.url, false)?;
    let authed = |method: Method, path: String| {
        api.request(method, &path)
            .bearer_auth(token.expose_secret())
    };
    let (shape, body) = match &args.command {
        ProviderCommand::Orgs(OrgsCommand::Create {
            name,
            admins,
            subscription_enabled,
            expires_at,
            call_threshold,
            partner_id,
        }) => {
            let admins: Vec<AdminBody<'_>> = admins
                .iter()
                .map(|a| AdminBody {
                    login_name: &a.login,
                    password: a.password.expose_secret(),
                    role: a.role,
                })
                .collect();
            let body = CreateOrgBody {
                name,
                admins,
                subscription: SubscriptionBody {
                    enabled: *subscription_enabled,
                    expires_at: *expires_at,
                },
                call_threshold: *call_threshold,
                partner_id: *partner_id,
            };
            let req = authed(Method::POST, "/provider/v1/orgs".into()).json(&body);
            (Shape::Org, send(req).await?)
        }
        ProviderCommand::Orgs(OrgsCommand::Move {
            id,
            partner_id,
            platform,
        }) => {
            let owner = if *platform { None } else { *partner_id };
            let req = authed(Method::PUT, format!("/provider/v1/orgs/{id}/partner"))
                .json(&json!({ "partnerId": owner }));
            (Shape::Org, send(req).await?)
        }
        ProviderCommand::Orgs(OrgsCommand::BaseUrl {
            id,
            base_url,
            clear,
        }) => {
            let url = if *clear { None } else { base_url.clone() };
            let req = authed(Method::PUT, format!("/provider/v1/orgs/{id}/baseUrl"))
                .json(&json!({ "baseUrl": url }));
            (Shape::Org, send(req).await?)
        }
        ProviderCommand::Partners(PartnersCommand::Create {
            name,
            support_url,
            support_email,
        }) => {
            let body =
                json!({"name": name, "supportUrl": support_url, "supportEmail": support_email});
            let req = authed(Method::POST, "/provider/v1/partners".into()).json(&body);
            (Shape::Partner, send(req).await?)
        }
        ProviderCommand::Partners(PartnersCommand::List) => {
            let req = authed(Method::GET, "/provider/v1/partners".into());
            (Shape::Partners, send(req).await?)
        }
        ProviderCommand::Partners(PartnersCommand::Get { id }) => {
            let req = authed(Method::GET, format!("/provider/v1/partners/{id}"));
            (Shape::Partner, send(req).await?)
        }
        ProviderCommand::Partners(PartnersCommand::Update {
            id,
            name,
            support_url,
            support_email,
        }) => {
            let body =
                json!({"name": name, "supportUrl": support_url, "supportEmail": support_email});
            let req = authed(Method::PUT, format!("/provider/v1/partners/{id}")).json(&body);
            (Shape::Partner, send(req).await?)
        }
        ProviderCommand::Orgs(OrgsCommand::List { page, search }) => {
            let mut query = page.query();
            if let Some(s) = search {
                query.push(("search", s.clone()));
            }
            let req = authed(Method::GET, "/provider/v1/orgs".into()).query(&query);
            (Shape::OrgPage, send(req).await?)
        }
        ProviderCommand::Orgs(OrgsCommand::Get { id }) => {
            let req = authed(Method::GET, format!("/provider/v1/orgs/{id}"));
            (Shape::Org, send(req).await?)
        }
        ProviderCommand::Subscription(SubscriptionCommand::Set {
            id,
            enabled,
            expires_at,
        }) => {
            let body = SubscriptionBody {
                enabled: *enabled,
                expires_at: *expires_at,
            };
            let req =
                authed(Method::PUT, format!("/provider/v1/orgs/{id}/subscription")).json(&body);
            (Shape::Org, send(req).await?)
        }
        ProviderCommand::Key(ProviderKeyCommand::Disable { id, reason, note }) => {
            let body = json!({"reason": reason, "note": note});
            let req = authed(
                Method::POST,
                format!("/provider/v1/orgs/{id}/apiKey/disable"),
            )
            .json(&body);
            (Shape::Org, send(req).await?)
        }
        ProviderCommand::Key(ProviderKeyCommand::Enable { id }) => {
            let req = authed(
                Method::POST,
                format!("/provider/v1/orgs/{id}/apiKey/enable"),
            );
            (Shape::Org, send(req).await?)
        }
        ProviderCommand::Admins(AdminsCommand::Add {
            id,
            login,
            password,
            role,
        }) => {
            let password = secret_or_stdin(password, "--password")?;
            let body = AdminBody {
                login_name: login,
                password: password.expose_secret(),
                role: *role,
            };
            let req = authed(Method::POST, format!("/provider/v1/orgs/{id}/admins")).json(&body);
            (Shape::Admin, send(req).await?)
        }
        ProviderCommand::Admins(AdminsCommand::Remove { id, admin_id }) => {
            let req = authed(
                Method::DELETE,
                format!("/provider/v1/orgs/{id}/admins/{admin_id}"),
            );
            (
                Shape::Done(format!("admin {admin_id} removed from org {id}")),
                send(req).await?,
            )
        }
        ProviderCommand::Operators(c) => operators::operators(c, authed).await?,
        ProviderCommand::Tokens(c) => operators::tokens(c, authed).await?,
        ProviderCommand::Bootstrap(c) => operators::bootstrap(c, authed).await?,
        ProviderCommand::Audit { id, page } => {
            let req =
                authed(Method::GET, format!("/provider/v1/orgs/{id}/audit")).query(&page.query());
            (Shape::Audit, send(req).await?)
        }
    };
    print_result(args.output, &shape, body.as_ref())
}

pub async fn run_admin(args: AdminArgs) -> anyhow::Result<()> {
    let login = args
        .login
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("no login name: pass --login or set KEYGATE_ADMIN_LOGIN"))?;
    let password = args.password.as_ref().ok_or_else(|| {
        anyhow::anyhow!("no password: pass --password or set KEYGATE_ADMIN_PASSWORD")
    })?;
    let password = secret_or_stdin(password, "--password")?;
    // Read a key value from stdin before logging in, so the session is not left waiting.
    let new_value = match &args.command {
        AdminCommand::Key(AdminKeyCommand::Edit { value }) => {
            Some(secret_or_stdin(value, "--value")?)
        }
        _ => None,
    };
    let api = Api::new(&args.url, true)?;

    let login_body = LoginBody {
        login_name: login,
        password: password.expose_secret(),
    };
    let reply = send(
        api.request(Method::POST, "/admin/v1/login")
            .json(&login_body),
    )
    .await?
    .ok_or_else(|| anyhow::anyhow!("login: the server sent no body"))?;
    let csrf = reply
        .value
        .get("csrfToken")
        .and_then(Value::as_str)
        .map(SecretString::from)
        .ok_or_else(|| anyhow::anyhow!("login: the server sent no csrfToken"))?;
    let write = |method: Method, path: &str| {
        api.request(method, path)
            .header(CSRF_HEADER, csrf.expose_secret())
    };

    let result = async {
        Ok::<_, anyhow::Error>(match &args.command {
            AdminCommand::Key(AdminKeyCommand::Show) => (
                Shape::Key,
                send(api.request(Method::GET, "/admin/v1/apiKey")).await?,
            ),
            AdminCommand::Key(AdminKeyCommand::Add) => (
                Shape::Key,
                send(write(Method::POST, "/admin/v1/apiKey")).await?,
            ),
            AdminCommand::Key(AdminKeyCommand::Edit { .. }) => {
                let value = new_value
                    .as_ref()
                    .map(|v| v.expose_secret())
                    .unwrap_or_default();
                let req = write(Method::PUT, "/admin/v1/apiKey").json(&json!({"keyValue": value}));
                (Shape::Key, send(req).await?)
            }
            AdminCommand::Key(AdminKeyCommand::Regenerate) => (
                Shape::Key,
                send(write(Method::POST, "/admin/v1/apiKey/regenerate")).await?,
            ),
            AdminCommand::Key(AdminKeyCommand::Delete) => (
                Shape::Done("key deleted".into()),
                send(write(Method::DELETE, "/admin/v1/apiKey")).await?,
            ),
            AdminCommand::Key(AdminKeyCommand::Reveal) => (
                Shape::Revealed,
                send(write(Method::POST, "/admin/v1/apiKey/reveal")).await?,
            ),
            AdminCommand::Audit { page } => {
                let req = api
                    .request(Method::GET, "/admin/v1/audit")
                    .query(&page.query());
                (Shape::Audit, send(req).await?)
            }
        })
    }
    .await;

    // Log out whatever happened; a failed logout only warns (the session still times out).
    let logout = send(write(Method::POST, "/admin/v1/logout")).await;
    let (shape, body) = result?;
    if let Err(e) = logout {
        eprintln!("warning: logout failed: {e:#}");
    }
    print_result(args.output, &shape, body.as_ref())
}

/// `-` means: read the secret from the first line of stdin.
fn secret_or_stdin(secret: &SecretString, flag: &str) -> anyhow::Result<SecretString> {
    if secret.expose_secret() != "-" {
        return Ok(secret.clone());
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("reading {flag} from stdin"))?;
    let value = SecretString::from(line.trim_end_matches(['\r', '\n']));
    zeroize::Zeroize::zeroize(&mut line);
    if value.expose_secret().is_empty() {
        anyhow::bail!("{flag} -: stdin gave an empty line");
    }
    Ok(value)
}

// ---------------------------------------------------------------------------- wire shapes

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LoginBody<'a> {
    login_name: &'a str,
    password: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AdminBody<'a> {
    login_name: &'a str,
    password: &'a str,
    role: Role,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionBody {
    enabled: bool,
    expires_at: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateOrgBody<'a> {
    name: &'a str,
    admins: Vec<AdminBody<'a>>,
    subscription: SubscriptionBody,
    call_threshold: Option<CallThreshold>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partner_id: Option<i64>,
}

// ----------------------------------------------------------------------------------- HTTP

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(url: &str, cookies: bool) -> anyhow::Result<Api> {
        let base = url.trim_end_matches('/').to_owned();
        reqwest::Url::parse(&base).with_context(|| format!("--url {url:?} is not a URL"))?;
        let http = reqwest::Client::builder()
            .cookie_store(cookies)
            // Never carry a token or session cookie somewhere the user did not point us.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        Ok(Api { http, base })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{}", self.base, path))
    }
}

/// An error answer from the server: `{"code","message"}` (or the bare status if it sent
/// something else). Displays as `CODE: message`.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiFailure {}

/// A successful answer's JSON body: parsed, and the text as the server sent it.
struct Reply {
    value: Value,
    raw: String,
}

/// Sends the request; a 2xx gives its JSON body (`None` when empty), anything else an
/// [`ApiFailure`].
async fn send(req: RequestBuilder) -> anyhow::Result<Option<Reply>> {
    let resp = req.send().await.map_err(|e| {
        let url = e.url().map(redacted_url).unwrap_or_default();
        anyhow::Error::new(e.without_url()).context(format!("cannot reach {url}"))
    })?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .with_context(|| format!("reading the response ({status})"))?;
    let parsed: Option<Value> = if text.trim().is_empty() {
        None
    } else {
        serde_json::from_str(&text).ok()
    };
    if status.is_success() {
        return match parsed {
            Some(value) => Ok(Some(Reply { value, raw: text })),
            None if text.trim().is_empty() => Ok(None),
            None => anyhow::bail!("the server answered {status} with a body that is not JSON"),
        };
    }
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let code = field("code").unwrap_or_else(|| format!("HTTP_{}", status.as_u16()));
    let message = field("message").unwrap_or_else(|| {
        format!(
            "the server answered {status}{}",
            if text.trim().is_empty() {
                ""
            } else {
                " with a body that is not a keygate error"
            }
        )
    });
    Err(ApiFailure {
        status,
        code,
        message,
    }
    .into())
}

/// The URL without any user name or password in it, for messages.
fn redacted_url(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

// --------------------------------------------------------------------------------- output

enum Shape {
    Org,
    OrgPage,
    Key,
    Revealed,
    Admin,
    Audit,
    Partner,
    Partners,
    /// No body (204): this sentence in text mode, nothing in JSON mode.
    Done(String),
    /// Text made by this function from the body.
    Custom(fn(&Value) -> String),
}

fn print_result(output: Output, shape: &Shape, body: Option<&Reply>) -> anyhow::Result<()> {
    let text = match (output, body) {
        (Output::Json, Some(r)) => pretty_json(&r.raw) + "\n",
        (Output::Json, None) => String::new(),
        (Output::Text, body) => {
            let null = Value::Null;
            let v = body.map(|r| &r.value).unwrap_or(&null);
            match shape {
                Shape::Org => org_text(v),
                Shape::OrgPage => org_page_text(v),
                Shape::Key => key_text(v),
                Shape::Revealed => format!("{}\n", str_of(&v["keyValue"])),
                Shape::Admin => format!(
                    "admin {}: {} ({})\n",
                    str_of(&v["id"]),
                    str_of(&v["loginName"]),
                    str_of(&v["role"])
                ),
                Shape::Audit => audit_text(v),
                Shape::Partner => partner_text(v),
                Shape::Partners => v["items"]
                    .as_array()
                    .map(|items| items.iter().map(partner_text).collect::<String>())
                    .unwrap_or_default(),
                Shape::Done(msg) => format!("{msg}\n"),
                Shape::Custom(f) => f(v),
            }
        }
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Re-indents JSON text (already known to be valid) the way `serde_json`'s pretty printer
/// does, but keeps the server's field order and number spelling.
fn pretty_json(text: &str) -> String {
    fn newline(out: &mut String, indent: usize) {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", indent));
    }
    let mut out = String::with_capacity(text.len() * 2);
    let mut indent = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while chars.next_if(|c| c.is_whitespace()).is_some() {}
                out.push(c);
                if chars.next_if_eq(&close).is_some() {
                    out.push(close);
                } else {
                    indent += 1;
                    newline(&mut out, indent);
                }
            }
            '}' | ']' => {
                indent = indent.saturating_sub(1);
                newline(&mut out, indent);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, indent);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// A JSON scalar as text: strings bare, null as `-`.
fn str_of(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn key_text(k: &Value) -> String {
    let mut status = str_of(&k["status"]);
    if let Some(reason) = k["disabledReason"].as_str() {
        status.push_str(&format!(" ({reason}"));
        if let Some(note) = k["disabledNote"].as_str() {
            status.push_str(&format!(": {note}"));
        }
        status.push(')');
    }
    let permissions = k["permissions"]
        .as_array()
        .map(|a| a.iter().map(str_of).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "-".into());
    let modified = format!(
        "{} by {}",
        k["lastModifiedTime"]
            .as_i64()
            .map(format_secs)
            .unwrap_or_else(|| "-".into()),
        str_of(&k["lastModifiedBy"]["name"])
    );
    format!(
        "key:            {}\nstatus:         {}\npermissions:    {}\nbase URL:       {}\nlast modified:  {}\n",
        str_of(&k["keyValue"]),
        status,
        permissions,
        str_of(&k["baseUrl"]),
        modified
    )
}

fn subscription_text(s: &Value) -> String {
    let expires = match s["expiresAt"].as_i64() {
        Some(t) => format!("expires {}", format_secs(t)),
        None => "never expires".into(),
    };
    format!(
        "{} (enabled: {}, {expires})",
        str_of(&s["state"]),
        str_of(&s["enabled"])
    )
}

fn threshold_text(t: &Value) -> String {
    match (t["calls"].as_i64(), t["periodSeconds"].as_i64()) {
        (Some(c), Some(p)) => format!("{c} calls per {p} s"),
        _ => "none".into(),
    }
}

fn org_text(o: &Value) -> String {
    let mut key = str_of(&o["keyStatus"]);
    if let Some(reason) = o["keyDisabledReason"].as_str() {
        key.push_str(&format!(" ({reason})"));
    }
    if let Some(value) = o["apiKey"]["keyValue"].as_str() {
        key.push_str(&format!(", {value}"));
    }
    let mut s = format!(
        "org {}: {}\n  created:         {}\n  subscription:    {}\n  call threshold:  {}\n  key:             {}\n",
        str_of(&o["id"]),
        str_of(&o["name"]),
        o["createdAt"]
            .as_i64()
            .map(|ms| format_secs(ms.div_euclid(1000)))
            .unwrap_or_else(|| "-".into()),
        subscription_text(&o["subscription"]),
        threshold_text(&o["callThreshold"]),
        key,
    );
    s.push_str(&format!(
        "  owner:           {}\n  base URL:        {}\n",
        o["partnerName"]
            .as_str()
            .map(|n| format!("partner {} ({n})", str_of(&o["partnerId"])))
            .unwrap_or_else(|| "the platform".into()),
        o["baseUrl"].as_str().unwrap_or("(the deployment's)"),
    ));
    if let Some(admins) = o["admins"].as_array() {
        s.push_str(&format!("  admins:          {}\n", admins.len()));
        for a in admins {
            s.push_str(&format!(
                "    {:>6}  {}  {}\n",
                str_of(&a["id"]),
                str_of(&a["loginName"]),
                str_of(&a["role"])
            ));
        }
    }
    s
}

fn partner_text(p: &Value) -> String {
    format!(
        "partner {}: {}\n  support URL:     {}\n  support e-mail:  {}\n",
        str_of(&p["id"]),
        str_of(&p["name"]),
        str_of(&p["supportUrl"]),
        str_of(&p["supportEmail"]),
    )
}

fn org_page_text(p: &Value) -> String {
    let mut s = format!(
        "{:>6}  {:<32}  {:<12}  {}\n",
        "ID", "NAME", "SUBSCRIPTION", "KEY"
    );
    for o in p["items"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let mut key = str_of(&o["keyStatus"]);
        if let Some(reason) = o["keyDisabledReason"].as_str() {
            key.push_str(&format!(" ({reason})"));
        }
        s.push_str(&format!(
            "{:>6}  {:<32}  {:<12}  {}\n",
            str_of(&o["id"]),
            str_of(&o["name"]),
            str_of(&o["subscription"]["state"]),
            key
        ));
    }
    s.push_str(&page_footer(p, "orgs"));
    s
}

fn audit_text(p: &Value) -> String {
    let mut s = format!(
        "{:<20}  {:<24}  {:<28}  {:<5}  {}\n",
        "TIME (UTC)", "ACTION", "ACTOR", "KEY", "DETAILS"
    );
    for r in p["items"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let time = r["time"]
            .as_i64()
            .map(|ms| format_secs(ms.div_euclid(1000)))
            .unwrap_or_else(|| "-".into());
        let actor = match r["actorTier"].as_str() {
            // A provider-side actor: its tier too (issue 15).
            Some(tier) => format!(
                "{}:{} ({tier})",
                str_of(&r["actorType"]),
                str_of(&r["actorName"])
            ),
            None => format!("{}:{}", str_of(&r["actorType"]), str_of(&r["actorName"])),
        };
        let key = r["keySuffix"]
            .as_str()
            .map(|k| format!("…{k}"))
            .unwrap_or_else(|| "-".into());
        let details = match &r["details"] {
            Value::Null => "-".to_string(),
            Value::Object(m) if m.is_empty() => "-".to_string(),
            d => d.to_string(),
        };
        s.push_str(&format!(
            "{time:<20}  {:<24}  {actor:<28}  {key:<5}  {details}\n",
            str_of(&r["action"])
        ));
    }
    s.push_str(&page_footer(p, "records"));
    s
}

fn page_footer(p: &Value, what: &str) -> String {
    format!(
        "page {} ({} per page), {what} in all: {}\n",
        str_of(&p["page"]),
        str_of(&p["pageSize"]),
        str_of(&p["total"])
    )
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` UTC (proleptic Gregorian).
fn format_secs(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn admin_spec_splits_on_first_and_last_colon() {
        let a = AdminSpec::parse("a@x.example:pa:ss:word:VIEW_ONLY").unwrap();
        assert_eq!(a.login, "a@x.example");
        assert_eq!(a.password.expose_secret(), "pa:ss:word");
        assert_eq!(a.role, Role::ViewOnly);
        for bad in ["nocolon", "a:FULL", ":pw:FULL", "a::FULL", "a:pw:ADMIN"] {
            let err = AdminSpec::parse(bad).unwrap_err();
            assert!(!err.contains("pw"), "error echoes the input: {err}");
        }
    }

    #[test]
    fn call_threshold_parses() {
        assert_eq!(
            parse_call_threshold("100/3600").unwrap(),
            CallThreshold {
                calls: 100,
                period_seconds: 3600
            }
        );
        assert!(parse_call_threshold("100").is_err());
        assert!(parse_call_threshold("x/1").is_err());
    }

    #[test]
    fn debug_of_parsed_args_hides_secrets() {
        let cli = Cli::try_parse_from([
            "keygate",
            "provider",
            "--token",
            "tok-SECRET-1",
            "orgs",
            "create",
            "--name",
            "N",
            "--admin",
            "a@b:pw-SECRET-2:FULL",
        ])
        .unwrap();
        let Command::Provider(p) = cli.command else {
            panic!("not a provider command")
        };
        let shown = format!("{p:?}");
        assert!(!shown.contains("SECRET"), "{shown}");

        let cli = Cli::try_parse_from([
            "keygate",
            "admin",
            "--login",
            "a@b",
            "--password",
            "pw-SECRET-3",
            "key",
            "edit",
            "--value",
            "SECRETvalue1",
        ])
        .unwrap();
        let Command::Admin(a) = cli.command else {
            panic!("not an admin command")
        };
        let shown = format!("{a:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    #[test]
    fn global_options_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "keygate",
            "provider",
            "orgs",
            "list",
            "--output",
            "json",
            "--url",
            "http://h:1",
        ])
        .unwrap();
        let Command::Provider(p) = cli.command else {
            panic!("not a provider command")
        };
        assert_eq!(p.output, Output::Json);
        assert_eq!(p.url, "http://h:1");
    }

    #[test]
    fn pretty_json_keeps_order_and_matches_serde_layout() {
        let raw = r#"{"z":1,"a":[],"m":{},"s":"x,\\\"{[:]}","n":[1.50,{"k":null}],"e":-2e3}"#;
        let pretty = pretty_json(raw);
        assert!(pretty.find("\"z\"").unwrap() < pretty.find("\"a\"").unwrap());
        assert!(pretty.contains("1.50"), "{pretty}");
        let reparsed: Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(reparsed, serde_json::from_str::<Value>(raw).unwrap());
        let sorted = r#"{ "a" : [ ], "b" : { "c" : [1, 2] , "d" : {} } , "e":"\u00e9 "}"#;
        let value: Value = serde_json::from_str(sorted).unwrap();
        assert_eq!(
            pretty_json(sorted),
            serde_json::to_string_pretty(&value)
                .unwrap()
                .replace("é", "\\u00e9")
        );
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_secs(0), "1970-01-01 00:00:00");
        assert_eq!(format_secs(1_793_491_200), "2026-11-01 00:00:00");
        assert_eq!(format_secs(951_782_400 + 3661), "2000-02-29 01:01:01");
    }
}
