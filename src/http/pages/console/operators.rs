//! The console's operator and token pages (issue 15): `/console/operators` (list; OWNERs
//! create and remove), `/console/tokens` (the tokens one may see; create — the value shown
//! once on the answer page — and revoke). Same `Services` calls as the provider API, so the
//! same roles, scope and audit; CSRF and same-origin as every console form.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{AREA, ConsolePost, ProviderUser, error_page};
use crate::domain::admin::{LoginName, Password};
use crate::domain::ids::{OperatorId, TokenId};
use crate::domain::tier::OperatorRole;
use crate::domain::time::Millis;
use crate::http::error::ApiError;
use crate::http::extract::{AppState, ClientAddr, parse_id};
use crate::http::pages::common::{Chrome, api_message, format_millis, html, parse_utc, see_other};
use crate::service::operators::{OperatorInput, parse_display_name, parse_label};

pub struct OperatorRow {
    id: i64,
    login: String,
    name: String,
    role: &'static str,
    tier: String,
}

#[derive(Template)]
#[template(path = "console/operators.html")]
struct OperatorsPage {
    chrome: Chrome,
    rows: Vec<OperatorRow>,
    may_manage: bool,
    notice: Option<&'static str>,
    error: Option<String>,
}

async fn operators_view(
    state: &AppState,
    user: &ProviderUser,
    notice: Option<&'static str>,
    error: Option<String>,
) -> Result<OperatorsPage, ApiError> {
    let ops = state.list_operators(user.principal()).await?;
    Ok(OperatorsPage {
        chrome: Chrome::new(AREA, "Operators", user.csrf.clone()).signed_in(user.who()),
        rows: ops
            .into_iter()
            .map(|o| OperatorRow {
                id: o.id.0,
                login: o.login_name,
                name: o.display_name,
                role: o.role.as_str(),
                tier: match o.partner_id {
                    Some(p) => format!("partner {p}"),
                    None => "platform".into(),
                },
            })
            .collect(),
        may_manage: user.principal().may_manage_operators(),
        notice,
        error,
    })
}

pub async fn operators_page(
    State(state): State<AppState>,
    user: ProviderUser,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let notice = match q.get("done").map(String::as_str) {
        Some("created") => Some("Operator created."),
        Some("removed") => Some("Operator removed; its tokens are revoked."),
        Some("edited") => Some("Operator changed."),
        _ => None,
    };
    match operators_view(&state, &user, notice, None).await {
        Ok(p) => html(StatusCode::OK, &p),
        Err(e) => error_page(e).await,
    }
}

#[derive(Deserialize)]
struct OperatorForm {
    #[serde(default)]
    login_name: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    password: Option<SecretString>,
    #[serde(default)]
    role: String,
}

async fn refused_operators(state: &AppState, user: &ProviderUser, e: ApiError) -> Response {
    let (status, text) = api_message(e).await;
    match operators_view(state, user, None, Some(text)).await {
        Ok(p) => html(status, &p),
        Err(e) => error_page(e).await,
    }
}

pub async fn create_operator(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    post: ConsolePost,
) -> Response {
    let f: OperatorForm = match post.form.fields(AREA) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let parsed = (|| -> Result<OperatorInput, crate::domain::FieldError> {
        let password = f
            .password
            .as_ref()
            .map(|p| p.expose_secret().to_owned())
            .unwrap_or_default();
        Ok(OperatorInput {
            partner: None,
            login: LoginName::parse("loginName", f.login_name.trim())?,
            display_name: parse_display_name("displayName", &f.display_name)?,
            password: Password::parse("password", &password)?,
            role: OperatorRole::parse(f.role.trim()).ok_or_else(|| {
                crate::domain::FieldError::new("role", "must be OWNER, OPERATOR or AUDITOR")
            })?,
        })
    })();
    let done = match parsed {
        Ok(input) => state
            .create_operator(post.user.principal(), input, client)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e.into()),
    };
    match done {
        Ok(_) => see_other("/console/operators?done=created"),
        Err(e) => refused_operators(&state, &post.user, e).await,
    }
}

pub async fn remove_operator(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    post: ConsolePost,
) -> Response {
    let done = match parse_id("id", &id) {
        Ok(id) => state
            .remove_operator(post.user.principal(), OperatorId(id), client)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => see_other("/console/operators?done=removed"),
        Err(e) => refused_operators(&state, &post.user, e).await,
    }
}

#[derive(Deserialize)]
struct EditForm {
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: Option<SecretString>,
}

/// Display name, role, password: a blank field stays as it is.
pub async fn edit_operator(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    post: ConsolePost,
) -> Response {
    let f: EditForm = match post.form.fields(AREA) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let parsed = (|| -> Result<_, ApiError> {
        let id = OperatorId(parse_id("id", &id)?);
        let name = match f.display_name.trim() {
            "" => None,
            d => Some(parse_display_name("displayName", d)?),
        };
        let role =
            match f.role.trim() {
                "" => None,
                r => Some(OperatorRole::parse(r).ok_or_else(|| {
                    ApiError::invalid("role", "must be OWNER, OPERATOR or AUDITOR")
                })?),
            };
        let password = match f.password.as_ref().map(|p| p.expose_secret().to_owned()) {
            Some(p) if !p.is_empty() => Some(Password::parse("password", &p)?),
            _ => None,
        };
        if name.is_none() && role.is_none() && password.is_none() {
            return Err(ApiError::invalid(
                "displayName",
                "give at least one of display name, role, password",
            ));
        }
        Ok((id, name, role, password))
    })();
    let done = match parsed {
        Ok((id, name, role, password)) => state
            .update_operator(post.user.principal(), id, name, role, password, client)
            .await
            .map(|_| ())
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => see_other("/console/operators?done=edited"),
        Err(e) => refused_operators(&state, &post.user, e).await,
    }
}

pub struct TokenRow {
    id: i64,
    label: String,
    operator: String,
    created: String,
    expires: String,
    state: String,
    live: bool,
}

#[derive(Template)]
#[template(path = "console/tokens.html")]
struct TokensPage {
    chrome: Chrome,
    rows: Vec<TokenRow>,
    /// A token just made: its value, shown this once.
    issued: Option<String>,
    notice: Option<&'static str>,
    error: Option<String>,
}

async fn tokens_view(
    state: &AppState,
    user: &ProviderUser,
    issued: Option<String>,
    notice: Option<&'static str>,
    error: Option<String>,
) -> Result<TokensPage, ApiError> {
    let tokens = state.list_operator_tokens(user.principal()).await?;
    Ok(TokensPage {
        chrome: Chrome::new(AREA, "Tokens", user.csrf.clone()).signed_in(user.who()),
        rows: tokens
            .into_iter()
            .map(|t| TokenRow {
                id: t.id.0,
                label: t.label,
                operator: t
                    .operator_id
                    .map(|o| format!("operator {o}"))
                    .unwrap_or_else(|| "bootstrap".into()),
                created: format_millis(t.created_at),
                expires: t
                    .expires_at
                    .map(format_millis)
                    .unwrap_or_else(|| "never".into()),
                state: match t.revoked_at {
                    Some(at) => format!("revoked {}", format_millis(at)),
                    None => "live".into(),
                },
                live: t.revoked_at.is_none(),
            })
            .collect(),
        issued,
        notice,
        error,
    })
}

pub async fn tokens_page(
    State(state): State<AppState>,
    user: ProviderUser,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let notice = match q.get("done").map(String::as_str) {
        Some("revoked") => Some("Token revoked."),
        _ => None,
    };
    match tokens_view(&state, &user, None, notice, None).await {
        Ok(p) => html(StatusCode::OK, &p),
        Err(e) => error_page(e).await,
    }
}

#[derive(Deserialize)]
struct TokenForm {
    #[serde(default)]
    label: String,
    /// `YYYY-MM-DD HH:MM` UTC; blank = never.
    #[serde(default)]
    expires_at: String,
    /// Blank = one's own.
    #[serde(default)]
    operator_id: String,
}

async fn refused_tokens(state: &AppState, user: &ProviderUser, e: ApiError) -> Response {
    let (status, text) = api_message(e).await;
    match tokens_view(state, user, None, None, Some(text)).await {
        Ok(p) => html(status, &p),
        Err(e) => error_page(e).await,
    }
}

pub async fn create_token(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    post: ConsolePost,
) -> Response {
    let f: TokenForm = match post.form.fields(AREA) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let parsed = (|| -> Result<_, ApiError> {
        let label = parse_label("label", &f.label)?;
        let expires = match f.expires_at.trim() {
            "" => None,
            s => Some(Millis(
                parse_utc(s).map_err(|r| ApiError::invalid("expiresAt", r))? * 1000,
            )),
        };
        let operator = match f.operator_id.trim() {
            "" => None,
            s => Some(OperatorId(parse_id("operatorId", s)?)),
        };
        Ok((label, expires, operator))
    })();
    let done = match parsed {
        Ok((label, expires, operator)) => state
            .create_operator_token(post.user.principal(), operator, label, expires, client)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match done {
        // The value is on this answer only (no redirect: a reload must not show it again;
        // pages are `no-store`).
        Ok(issued) => match tokens_view(&state, &post.user, Some(issued.value), None, None).await {
            Ok(p) => html(StatusCode::CREATED, &p),
            Err(e) => error_page(e).await,
        },
        Err(e) => refused_tokens(&state, &post.user, e).await,
    }
}

pub async fn revoke_token(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    post: ConsolePost,
) -> Response {
    let done = match parse_id("id", &id) {
        Ok(id) => state
            .revoke_operator_token(post.user.principal(), TokenId(id), client)
            .await
            .map(|_| ())
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match done {
        // Revoking the token of this very session ends it: the next page asks to sign in.
        Ok(()) => see_other("/console/tokens?done=revoked"),
        Err(e) => refused_tokens(&state, &post.user, e).await,
    }
}
