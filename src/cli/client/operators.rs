//! `keygate provider operators …`, `keygate provider tokens …`,
//! `keygate provider bootstrap retire` (issue 15).

use clap::{Subcommand, ValueEnum};
use reqwest::{Method, RequestBuilder};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{Reply, Shape, format_secs, secret_or_stdin, send, str_of};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperatorRole {
    Owner,
    Operator,
    Auditor,
}

impl OperatorRole {
    fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Owner => "OWNER",
            OperatorRole::Operator => "OPERATOR",
            OperatorRole::Auditor => "AUDITOR",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum OperatorsCommand {
    /// Create an operator (OWNER): of the platform, or with --partner of a partner.
    Create {
        /// Login name (console sign-in).
        #[arg(long)]
        login: String,
        /// The name the audit shows.
        #[arg(long)]
        display_name: String,
        /// Password ("-" reads it from the first line of stdin).
        #[arg(long)]
        password: SecretString,
        #[arg(long, value_enum)]
        role: OperatorRole,
        /// Partner id (platform owners only; a partner's owner may omit it).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        partner: Option<i64>,
    },
    /// The active operators in your scope.
    List,
    /// One operator.
    Get {
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
    /// Change an operator's display name, role or password.
    Edit {
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long, value_enum)]
        role: Option<OperatorRole>,
        /// New password ("-" reads it from the first line of stdin).
        #[arg(long)]
        password: Option<SecretString>,
    },
    /// Remove an operator (OWNER): its tokens are revoked.
    Remove {
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Create a personal bearer token; its value is printed this once.
    Create {
        #[arg(long)]
        label: String,
        /// When it expires, Unix seconds (default: never).
        #[arg(long, value_name = "EPOCH_SECS")]
        expires_at: Option<i64>,
        /// Whose token (default: your own; another operator's takes an OWNER).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        operator: Option<i64>,
    },
    /// The tokens you may see, never their values.
    List,
    /// Revoke a token, at once on every node (the bootstrap token's id retires it).
    Revoke {
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
    /// A new value for a token; the old one is revoked. The new value is printed once.
    Rotate {
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum BootstrapCommand {
    /// Retire the bootstrap token for good (a platform OWNER operator must exist).
    Retire,
}

pub(super) async fn operators(
    cmd: &OperatorsCommand,
    authed: impl Fn(Method, String) -> RequestBuilder,
) -> anyhow::Result<(Shape, Option<Reply>)> {
    Ok(match cmd {
        OperatorsCommand::Create {
            login,
            display_name,
            password,
            role,
            partner,
        } => {
            let password = secret_or_stdin(password, "--password")?;
            let body = json!({
                "loginName": login, "displayName": display_name,
                "password": password.expose_secret(), "role": role.as_str(), "partnerId": partner,
            });
            let req = authed(Method::POST, "/provider/v1/operators".into()).json(&body);
            (Shape::Custom(operator_text), send(req).await?)
        }
        OperatorsCommand::List => {
            let req = authed(Method::GET, "/provider/v1/operators".into());
            (Shape::Custom(operator_list_text), send(req).await?)
        }
        OperatorsCommand::Get { id } => {
            let req = authed(Method::GET, format!("/provider/v1/operators/{id}"));
            (Shape::Custom(operator_text), send(req).await?)
        }
        OperatorsCommand::Edit {
            id,
            display_name,
            role,
            password,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(d) = display_name {
                body.insert("displayName".into(), json!(d));
            }
            if let Some(r) = role {
                body.insert("role".into(), json!(r.as_str()));
            }
            if let Some(p) = password {
                let p = secret_or_stdin(p, "--password")?;
                body.insert("password".into(), json!(p.expose_secret()));
            }
            let req = authed(Method::PATCH, format!("/provider/v1/operators/{id}")).json(&body);
            (Shape::Custom(operator_text), send(req).await?)
        }
        OperatorsCommand::Remove { id } => {
            let req = authed(Method::DELETE, format!("/provider/v1/operators/{id}"));
            (
                Shape::Done(format!("operator {id} removed; its tokens are revoked")),
                send(req).await?,
            )
        }
    })
}

pub(super) async fn tokens(
    cmd: &TokensCommand,
    authed: impl Fn(Method, String) -> RequestBuilder,
) -> anyhow::Result<(Shape, Option<Reply>)> {
    Ok(match cmd {
        TokensCommand::Create {
            label,
            expires_at,
            operator,
        } => {
            let body = json!({"label": label, "expiresAt": expires_at, "operatorId": operator});
            let req = authed(Method::POST, "/provider/v1/tokens".into()).json(&body);
            (Shape::Custom(issued_text), send(req).await?)
        }
        TokensCommand::List => {
            let req = authed(Method::GET, "/provider/v1/tokens".into());
            (Shape::Custom(token_list_text), send(req).await?)
        }
        TokensCommand::Revoke { id } => {
            let req = authed(Method::DELETE, format!("/provider/v1/tokens/{id}"));
            (Shape::Done(format!("token {id} revoked")), send(req).await?)
        }
        TokensCommand::Rotate { id } => {
            let req = authed(Method::POST, format!("/provider/v1/tokens/{id}/rotate"));
            (Shape::Custom(issued_text), send(req).await?)
        }
    })
}

pub(super) async fn bootstrap(
    cmd: &BootstrapCommand,
    authed: impl Fn(Method, String) -> RequestBuilder,
) -> anyhow::Result<(Shape, Option<Reply>)> {
    Ok(match cmd {
        BootstrapCommand::Retire => {
            let req = authed(Method::POST, "/provider/v1/bootstrap/retire".into());
            (
                Shape::Done("the bootstrap token is retired".into()),
                send(req).await?,
            )
        }
    })
}

fn operator_text(o: &Value) -> String {
    format!(
        "operator {}: {} \"{}\" {} {}\n",
        str_of(&o["id"]),
        str_of(&o["loginName"]),
        str_of(&o["displayName"]),
        str_of(&o["role"]),
        match o["partnerId"].as_i64() {
            Some(p) => format!("partner {p}"),
            None => "platform".into(),
        }
    )
}

fn operator_list_text(v: &Value) -> String {
    let items = v["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    items.iter().map(operator_text).collect()
}

fn when(v: &Value, none: &str) -> String {
    v.as_i64()
        .map(|ms| format_secs(ms.div_euclid(1000)))
        .unwrap_or_else(|| none.into())
}

fn token_text(t: &Value) -> String {
    format!(
        "token {}: \"{}\" {} created {}, expires {}, {}\n",
        str_of(&t["id"]),
        str_of(&t["label"]),
        match t["operatorId"].as_i64() {
            Some(o) => format!("operator {o}"),
            None => "bootstrap".into(),
        },
        when(&t["createdAt"], "-"),
        when(&t["expiresAt"], "never"),
        match t["revokedAt"].as_i64() {
            Some(_) => format!("revoked {}", when(&t["revokedAt"], "-")),
            None => "live".into(),
        }
    )
}

fn token_list_text(v: &Value) -> String {
    let items = v["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    items.iter().map(token_text).collect()
}

fn issued_text(t: &Value) -> String {
    format!(
        "{}{}\n(shown once: keygate keeps only its SHA-256)\n",
        token_text(t),
        str_of(&t["value"])
    )
}
