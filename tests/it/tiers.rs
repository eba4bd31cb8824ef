//! Two tiers above an org (issue 15): the platform and its partners.
//!
//! - The cross-tenant matrix: two partners P and Q, each with an org and an operator of every
//!   role, the platform's operators and its bootstrap token, an org admin (with its admin
//!   session) and a wrong token; every provider API operation (`/openapi.json`'s `/provider/` paths) and every
//!   provider console route, with every credential, against every party's objects and an id
//!   that does not exist. What each may do is ONE table (`API` and `CONSOLE`, one row per
//!   operation, a `Rule` each) read by `expect`; an operation without a row fails the test.
//!   A refused request changes nothing (the object is read back and compared).
//! - Who disabled a key: the partner's notice and contact on the portal (and in Chromium),
//!   the platform re-enables a partner's disablement, a partner cannot re-enable the
//!   platform's.
//! - The per-org base URL: validated, shown on the key page and in the key object.
//! - Moving an org between partners moves who sees it (and its audit); R9's disablement is
//!   re-enabled by the owning partner; a renamed partner is in the key objects at once.
//!
//! Operators and their tokens are made through the API (`make_operator`), as a deployment
//! makes them.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::header::HeaderMap;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;

// ------------------------------------------------------------------ operators

/// An operator made as a deployment makes one.
pub struct Made {
    pub id: i64,
    pub token_id: i64,
    pub token: String,
}

/// Makes an operator (`partner`: `None` = the platform) with one live token through the
/// API: the platform (the bootstrap token) creates it with `POST /provider/v1/operators`
/// (`partnerId`) and its token with `POST /provider/v1/tokens` (`operatorId`).
pub async fn make_operator(
    server: &TestServer,
    partner: Option<i64>,
    role: &str,
    login: &str,
) -> Made {
    let (s, op) = server
        .provider(
            Method::POST,
            "/provider/v1/operators",
            Some(json!({
                "loginName": login, "displayName": format!("Operator {login}"),
                "password": PASSWORD, "role": role, "partnerId": partner,
            })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{op}");
    let id = op["id"].as_i64().unwrap();
    let (token_id, token) = make_token(server, id).await;
    Made {
        id,
        token_id,
        token,
    }
}

/// A new token of operator `id`, made by the platform: (token id, value).
pub async fn make_token(server: &TestServer, id: i64) -> (i64, String) {
    let (s, t) = server
        .provider(
            Method::POST,
            "/provider/v1/tokens",
            Some(json!({"label": "test", "operatorId": id})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    (
        t["id"].as_i64().unwrap(),
        t["value"].as_str().unwrap().to_owned(),
    )
}

/// An operator's token (see `make_operator`).
pub async fn operator_token(
    server: &TestServer,
    partner: Option<i64>,
    role: &str,
    login: &str,
) -> String {
    make_operator(server, partner, role, login).await.token
}

// ------------------------------------------------------------------ parties and requests

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Party {
    Platform,
    P,
    Q,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Owner,
    Operator,
    Auditor,
}

/// Who calls.
#[derive(Debug, Clone)]
struct Actor {
    name: String,
    /// `None`: no provider credential (an org admin's session, or nothing).
    tier: Option<Party>,
    role: Role,
    token: Option<String>,
    /// Its operator (none: the bootstrap token, no credential).
    op: Option<i64>,
    /// Sends with this client (an org admin's, holding its session cookie).
    client: Option<Client>,
}

/// What a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The collection (list, create).
    None,
    /// The org (or partner) of this party.
    Of(Party),
    /// An id that does not exist.
    Missing,
    /// The bootstrap token (token operations).
    Bootstrap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Ok,
    NotFound,
    Forbidden,
    Unauthorized,
    BadRequest,
}

/// What an operation is, as far as who may use it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Lists orgs: everyone with a credential, filtered to what it sees.
    OrgList,
    /// Creates an org (owned by the caller's partner): OWNER and OPERATOR.
    OrgCreate,
    /// Reads an org: who sees it.
    OrgRead,
    /// Changes an org: who sees it, OWNER and OPERATOR.
    OrgChange,
    /// Gives an org to another owner: who sees it, the platform's OWNERs.
    OrgMove,
    /// Lists partners: everyone with a credential, filtered.
    PartnerList,
    /// Creates a partner: the platform's OWNERs.
    PartnerCreate,
    /// Reads a partner: the platform, and the partner itself.
    PartnerRead,
    /// Edits a partner: who may know it, the platform's OWNERs.
    PartnerEdit,
    /// Lists operators: everyone with a credential, filtered to its tier.
    OpList,
    /// Creates an operator (of the caller's tier, or of the partner named): OWNERs who may
    /// know the partner.
    OpCreate,
    /// Reads an operator: who may know it.
    OpRead,
    /// Edits another operator: who may know it, OWNERs.
    OpChange,
    /// Removes an operator (a disposable one): who may know it, OWNERs.
    OpRemove,
    /// Lists tokens: everyone with a credential, filtered.
    TokenList,
    /// Creates a token (one's own, or the named operator's: who may know it, OWNERs).
    TokenCreate,
    /// Reads a token's metadata: who may know it, OWNERs and AUDITORs; an OPERATOR only its
    /// own (as its list).
    TokenRead,
    /// Revokes a token (a disposable one): who may know it, OWNERs; the bootstrap token the
    /// platform's OWNERs.
    TokenRevoke,
    /// Rotates a token (a disposable one): as revoke; the bootstrap token is never rotated.
    TokenRotate,
    /// Retires the bootstrap token: the platform's OWNERs.
    Retire,
    /// Console pages about no object (sign-in, sign-out): not in the matrix.
    NotScoped,
}

impl Rule {
    /// Operations on operators and tokens (their refusals say `OPERATOR_ROLE_NOT_ALLOWED`).
    fn of_operators(self) -> bool {
        matches!(
            self,
            Rule::OpList
                | Rule::OpCreate
                | Rule::OpRead
                | Rule::OpChange
                | Rule::OpRemove
                | Rule::TokenList
                | Rule::TokenCreate
                | Rule::TokenRead
                | Rule::TokenRevoke
                | Rule::TokenRotate
                | Rule::Retire
        )
    }

    /// Consumes its target when allowed: run against a disposable object.
    fn destroys(self) -> bool {
        matches!(self, Rule::OpRemove | Rule::TokenRevoke | Rule::TokenRotate)
    }
}

/// An allowed operation that would retire the bootstrap token the matrix signs with: run
/// once, at the end.
fn retires_bootstrap(rule: Rule, target: Target, want: Expect) -> bool {
    want == Expect::Ok
        && (rule == Rule::Retire || (rule == Rule::TokenRevoke && target == Target::Bootstrap))
}

fn sees(tier: Party, owner: Party) -> bool {
    tier == Party::Platform || tier == owner
}

/// THE table's reading: what `actor` gets from an operation of `rule` on `target`.
fn expect(rule: Rule, actor: &Actor, target: Target) -> Expect {
    let Some(tier) = actor.tier else {
        return Expect::Unauthorized;
    };
    let changes = actor.role != Role::Auditor;
    let owner = actor.role == Role::Owner;
    let platform_owner = tier == Party::Platform && owner;
    let visible = |t: Target| match t {
        Target::Of(owner) => sees(tier, owner),
        Target::Missing => false,
        Target::None => true,
        Target::Bootstrap => tier == Party::Platform,
    };
    let gate = |ok: bool| if ok { Expect::Ok } else { Expect::Forbidden };
    match rule {
        Rule::OrgList | Rule::PartnerList | Rule::NotScoped => Expect::Ok,
        Rule::OrgCreate => gate(changes),
        Rule::PartnerCreate => gate(platform_owner),
        Rule::OrgRead | Rule::PartnerRead if !visible(target) => Expect::NotFound,
        Rule::OrgRead | Rule::PartnerRead => Expect::Ok,
        Rule::OrgChange if !visible(target) => Expect::NotFound,
        Rule::OrgChange => gate(changes),
        Rule::OrgMove | Rule::PartnerEdit if !visible(target) => Expect::NotFound,
        Rule::OrgMove | Rule::PartnerEdit => gate(platform_owner),
        Rule::OpList | Rule::TokenList => Expect::Ok,
        Rule::Retire => gate(platform_owner),
        Rule::OpRead | Rule::TokenRead if !visible(target) => Expect::NotFound,
        // An OPERATOR reads only its own tokens, as it lists only those (the targets are
        // other operators' tokens and the bootstrap token).
        Rule::TokenRead if actor.role == Role::Operator => Expect::NotFound,
        Rule::OpRead | Rule::TokenRead => Expect::Ok,
        Rule::OpCreate
        | Rule::OpChange
        | Rule::OpRemove
        | Rule::TokenCreate
        | Rule::TokenRevoke
        | Rule::TokenRotate
            if !visible(target) =>
        {
            Expect::NotFound
        }
        // One's own token: anyone with an operator; the bootstrap token has none.
        Rule::TokenCreate if target == Target::None && actor.op.is_none() => Expect::BadRequest,
        Rule::TokenCreate if target == Target::None => Expect::Ok,
        Rule::TokenRotate if target == Target::Bootstrap && owner => Expect::BadRequest,
        Rule::OpCreate
        | Rule::OpChange
        | Rule::OpRemove
        | Rule::TokenCreate
        | Rule::TokenRevoke
        | Rule::TokenRotate => gate(owner),
    }
}

/// THE table of the provider API: every operation of `/openapi.json` under `/provider/`.
const API: &[(&str, &str, Rule)] = &[
    ("get", "/provider/v1/orgs", Rule::OrgList),
    ("post", "/provider/v1/orgs", Rule::OrgCreate),
    ("get", "/provider/v1/orgs/{id}", Rule::OrgRead),
    (
        "put",
        "/provider/v1/orgs/{id}/subscription",
        Rule::OrgChange,
    ),
    (
        "post",
        "/provider/v1/orgs/{id}/apiKey/disable",
        Rule::OrgChange,
    ),
    (
        "post",
        "/provider/v1/orgs/{id}/apiKey/enable",
        Rule::OrgChange,
    ),
    ("post", "/provider/v1/orgs/{id}/admins", Rule::OrgChange),
    (
        "delete",
        "/provider/v1/orgs/{id}/admins/{adminId}",
        Rule::OrgChange,
    ),
    (
        "delete",
        "/provider/v1/orgs/{id}/admins/{adminId}/keyGuesses",
        Rule::OrgChange,
    ),
    ("get", "/provider/v1/orgs/{id}/audit", Rule::OrgRead),
    ("put", "/provider/v1/orgs/{id}/limits", Rule::OrgChange),
    ("get", "/provider/v1/orgs/{id}/usage", Rule::OrgRead),
    ("put", "/provider/v1/orgs/{id}/partner", Rule::OrgMove),
    ("put", "/provider/v1/orgs/{id}/baseUrl", Rule::OrgChange),
    ("get", "/provider/v1/partners", Rule::PartnerList),
    ("post", "/provider/v1/partners", Rule::PartnerCreate),
    ("get", "/provider/v1/partners/{id}", Rule::PartnerRead),
    ("put", "/provider/v1/partners/{id}", Rule::PartnerEdit),
    ("get", "/provider/v1/operators", Rule::OpList),
    ("post", "/provider/v1/operators", Rule::OpCreate),
    ("get", "/provider/v1/operators/{id}", Rule::OpRead),
    ("patch", "/provider/v1/operators/{id}", Rule::OpChange),
    ("delete", "/provider/v1/operators/{id}", Rule::OpRemove),
    ("get", "/provider/v1/tokens", Rule::TokenList),
    ("post", "/provider/v1/tokens", Rule::TokenCreate),
    ("get", "/provider/v1/tokens/{id}", Rule::TokenRead),
    ("delete", "/provider/v1/tokens/{id}", Rule::TokenRevoke),
    ("post", "/provider/v1/tokens/{id}/rotate", Rule::TokenRotate),
    ("post", "/provider/v1/bootstrap/retire", Rule::Retire),
];

/// THE table of the provider console: every route of `src/http/pages/console.rs`.
const CONSOLE: &[(&str, &str, Rule)] = &[
    ("get", "/console", Rule::NotScoped),
    ("get", "/console/login", Rule::NotScoped),
    ("post", "/console/login", Rule::NotScoped),
    ("post", "/console/logout", Rule::NotScoped),
    ("get", "/console/orgs", Rule::OrgList),
    ("post", "/console/orgs", Rule::OrgCreate),
    ("get", "/console/orgs/{id}", Rule::OrgRead),
    ("post", "/console/orgs/{id}/key/disable", Rule::OrgChange),
    ("post", "/console/orgs/{id}/key/enable", Rule::OrgChange),
    ("post", "/console/orgs/{id}/subscription", Rule::OrgChange),
    ("post", "/console/orgs/{id}/limits", Rule::OrgChange),
    ("post", "/console/orgs/{id}/admins", Rule::OrgChange),
    (
        "post",
        "/console/orgs/{id}/admins/{admin_id}/remove",
        Rule::OrgChange,
    ),
    (
        "post",
        "/console/orgs/{id}/admins/{admin_id}/guesses/clear",
        Rule::OrgChange,
    ),
    ("post", "/console/orgs/{id}/base-url", Rule::OrgChange),
    ("post", "/console/orgs/{id}/partner", Rule::OrgMove),
    ("get", "/console/partners", Rule::PartnerList),
    ("post", "/console/partners", Rule::PartnerCreate),
    ("get", "/console/partners/{id}", Rule::PartnerRead),
    ("post", "/console/partners/{id}", Rule::PartnerEdit),
    ("get", "/console/operators", Rule::OpList),
    ("post", "/console/operators", Rule::OpCreate),
    ("post", "/console/operators/{id}/remove", Rule::OpRemove),
    ("post", "/console/operators/{id}/edit", Rule::OpChange),
    ("get", "/console/tokens", Rule::TokenList),
    ("post", "/console/tokens", Rule::TokenCreate),
    ("post", "/console/tokens/{id}/revoke", Rule::TokenRevoke),
];

/// The world of the matrix: one server, partners P and Q, an org of each party, operators
/// of every role in every tier, an org admin.
struct World {
    server: TestServer,
    partner: BTreeMap<Party, i64>,
    org: BTreeMap<Party, i64>,
    actors: Vec<Actor>,
    /// Orgs each party sees at the start (ids).
    seen: BTreeMap<Party, BTreeSet<i64>>,
    /// An OPERATOR of each party that is no actor (read and edited), and a token of it.
    target_op: BTreeMap<Party, Made>,
    bootstrap_token_id: i64,
    /// Every operator made here with a token (actors, targets, spares) → its party.
    op_party: std::sync::Mutex<BTreeMap<i64, Party>>,
    /// Disposable objects for destructive operations: (operator?, party) → id, made when
    /// the last one was consumed.
    spare: std::sync::Mutex<BTreeMap<(bool, Party), i64>>,
    made: std::sync::atomic::AtomicUsize,
}

const MISSING_ID: i64 = 999_999;

impl World {
    async fn build() -> World {
        // The wrong-token actor fails hundreds of times from the matrix's one address: the
        // per-address throttle (tested in `operators`) would answer everyone 429.
        let server = TestServer::start_with(|c| c.bearer_max_failures = u32::MAX).await;
        let mut partner = BTreeMap::new();
        for (party, name) in [(Party::P, "Partner P"), (Party::Q, "Partner Q")] {
            let (s, b) = server
                .provider(
                    Method::POST,
                    "/provider/v1/partners",
                    Some(json!({"name": name, "supportUrl": format!("https://{}.example/help", name.replace(' ', "-").to_lowercase()), "supportEmail": "help@partner.example"})),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
            partner.insert(party, b["id"].as_i64().unwrap());
        }
        let mut actors = vec![Actor {
            name: "bootstrap".into(),
            tier: Some(Party::Platform),
            role: Role::Owner,
            token: Some(PROVIDER_TOKEN.into()),
            op: None,
            client: None,
        }];
        let mut op_party = BTreeMap::new();
        let mut target_op = BTreeMap::new();
        for party in [Party::Platform, Party::P, Party::Q] {
            for role in [Role::Owner, Role::Operator, Role::Auditor] {
                let name = format!("{party:?}-{role:?}").to_lowercase();
                let made = make_operator(
                    &server,
                    partner.get(&party).copied(),
                    &format!("{role:?}").to_uppercase(),
                    &name,
                )
                .await;
                op_party.insert(made.id, party);
                actors.push(Actor {
                    name,
                    tier: Some(party),
                    role,
                    token: Some(made.token),
                    op: Some(made.id),
                    client: None,
                });
            }
            let login = format!("target-{party:?}").to_lowercase();
            let made =
                make_operator(&server, partner.get(&party).copied(), "OPERATOR", &login).await;
            op_party.insert(made.id, party);
            target_op.insert(party, made);
        }
        let (_, tokens) = server
            .provider(Method::GET, "/provider/v1/tokens", None)
            .await;
        let bootstrap_token_id = tokens["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["operatorId"].is_null())
            .expect("the bootstrap token is listed")["id"]
            .as_i64()
            .unwrap();
        // An org of each party, created by the party itself.
        let mut org = BTreeMap::new();
        for party in [Party::Platform, Party::P, Party::Q] {
            let owner = actors
                .iter()
                .find(|a| a.tier == Some(party) && a.role == Role::Owner && a.name != "bootstrap")
                .unwrap();
            let slug = format!("{party:?}").to_lowercase();
            let (s, b) = call(
                &server,
                owner,
                Method::POST,
                "/provider/v1/orgs",
                Some(json!({
                    "name": format!("Org of {slug}"),
                    "admins": [{"loginName": format!("full@{slug}"), "password": PASSWORD, "role": "FULL"}],
                    "subscription": {"enabled": true, "expiresAt": null},
                })),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
            assert_eq!(
                b["partnerId"].as_i64(),
                partner.get(&party).copied(),
                "owned by its creator"
            );
            org.insert(party, b["id"].as_i64().unwrap());
        }
        // An org admin of P's org, with its admin console session cookie.
        let admin = server.login("full@p").await;
        let (st, _) = admin.get("/admin/v1/apiKey").await;
        assert_eq!(st, StatusCode::OK, "the admin's session works");
        let admin_client = admin.http.clone();
        actors.push(Actor {
            name: "org admin of P (its session, no bearer)".into(),
            tier: None,
            role: Role::Auditor,
            token: None,
            op: None,
            client: Some(admin_client),
        });
        actors.push(Actor {
            name: "a wrong token".into(),
            tier: None,
            role: Role::Auditor,
            token: Some("x".repeat(43)),
            op: None,
            client: None,
        });
        let mut seen = BTreeMap::new();
        for tier in [Party::Platform, Party::P, Party::Q] {
            let ids = [Party::Platform, Party::P, Party::Q]
                .into_iter()
                .filter(|o| sees(tier, *o))
                .map(|o| org[&o])
                .collect();
            seen.insert(tier, ids);
        }
        World {
            server,
            partner,
            org,
            actors,
            seen,
            target_op,
            bootstrap_token_id,
            op_party: std::sync::Mutex::new(op_party),
            spare: Default::default(),
            made: Default::default(),
        }
    }

    /// The id a request of `rule` on `target` names: a disposable object for a destructive
    /// operation.
    async fn id_for(&self, rule: Rule, target: Target) -> i64 {
        match (rule, target) {
            (_, Target::Missing | Target::None) => MISSING_ID,
            (_, Target::Bootstrap) => self.bootstrap_token_id,
            (Rule::PartnerRead | Rule::PartnerEdit, t) => self.partner_id(t),
            (Rule::OpRead | Rule::OpChange, Target::Of(p)) => self.target_op[&p].id,
            (Rule::TokenRead, Target::Of(p)) => self.target_op[&p].token_id,
            (Rule::OpRemove, Target::Of(p)) => self.spare(true, p).await,
            (Rule::TokenRevoke | Rule::TokenRotate, Target::Of(p)) => self.spare(false, p).await,
            (_, t) => self.org_id(t),
        }
    }

    /// A disposable operator (an AUDITOR with a token) or token (of the party's target
    /// operator) of `party`.
    async fn spare(&self, operator: bool, party: Party) -> i64 {
        if let Some(id) = self.spare.lock().unwrap().get(&(operator, party)) {
            return *id;
        }
        let id = if operator {
            let n = self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let login = format!("spare{n}-{party:?}").to_lowercase();
            let made = make_operator(
                &self.server,
                self.partner.get(&party).copied(),
                "AUDITOR",
                &login,
            )
            .await;
            self.op_party.lock().unwrap().insert(made.id, party);
            made.id
        } else {
            make_token(&self.server, self.target_op[&party].id).await.0
        };
        self.spare.lock().unwrap().insert((operator, party), id);
        id
    }

    /// The disposable object of `rule` on `target` was consumed.
    fn consumed(&self, rule: Rule, target: Target) {
        if let (true, Target::Of(p)) = (rule.destroys(), target) {
            self.spare
                .lock()
                .unwrap()
                .remove(&(rule == Rule::OpRemove, p));
        }
    }

    fn org_id(&self, t: Target) -> i64 {
        match t {
            Target::Of(p) => self.org[&p],
            _ => MISSING_ID,
        }
    }

    fn partner_id(&self, t: Target) -> i64 {
        match t {
            Target::Of(Party::Platform) | Target::None => 0,
            Target::Of(p) => self.partner[&p],
            Target::Missing | Target::Bootstrap => MISSING_ID,
        }
    }

    /// The display name of the target operator (any for a missing one).
    fn target_name(&self, t: Target) -> String {
        match t {
            Target::Of(p) => format!("Operator target-{}", format!("{p:?}").to_lowercase()),
            _ => "Nobody".into(),
        }
    }

    /// The target operator's id for a body's `operatorId` (null: one's own).
    fn target_op_id(&self, t: Target) -> Value {
        match t {
            Target::Of(p) => json!(self.target_op[&p].id),
            Target::None => Value::Null,
            _ => json!(MISSING_ID),
        }
    }

    fn bootstrap(&self) -> &Actor {
        &self.actors[0]
    }

    fn platform_owner(&self) -> &Actor {
        self.actors
            .iter()
            .find(|a| a.tier == Some(Party::Platform) && a.role == Role::Owner && a.op.is_some())
            .unwrap()
    }

    /// An operator or token list holds only what `actor` may see.
    fn check_operator_list(
        &self,
        template: &str,
        actor: &Actor,
        answer: &Value,
        failures: &mut Vec<String>,
    ) {
        let tier = actor.tier.unwrap();
        let party_of_partner = |p: &Value| match p.as_i64() {
            None => Some(Party::Platform),
            Some(id) => self
                .partner
                .iter()
                .find(|(_, v)| **v == id)
                .map(|(k, _)| *k),
        };
        let items = || answer["items"].as_array().unwrap().iter();
        match template {
            "/provider/v1/operators" => {
                let ids: BTreeSet<i64> = items().map(|o| o["id"].as_i64().unwrap()).collect();
                for o in items() {
                    let party = party_of_partner(&o["partnerId"]);
                    if !party.is_some_and(|p| sees(tier, p)) {
                        failures.push(format!("{}: lists operator {o}", actor.name));
                    }
                }
                for (party, t) in &self.target_op {
                    if ids.contains(&t.id) != sees(tier, *party) {
                        failures.push(format!("{}: target of {party:?} listed?", actor.name));
                    }
                }
            }
            "/provider/v1/tokens" => {
                let op_party = self.op_party.lock().unwrap();
                for t in items() {
                    let op = t["operatorId"].as_i64();
                    let ok = match (actor.op, actor.role, op) {
                        // The bootstrap token sees all.
                        (None, _, _) => true,
                        // OWNERs and AUDITORs (who read everything in scope) see their
                        // tier's; an OPERATOR its own.
                        (Some(_), Role::Owner | Role::Auditor, None) => tier == Party::Platform,
                        (Some(_), Role::Owner | Role::Auditor, Some(op)) => {
                            op_party.get(&op).is_some_and(|p| sees(tier, *p))
                        }
                        (Some(own), _, op) => op == Some(own),
                    };
                    if !ok {
                        failures.push(format!("{}: lists token {t}", actor.name));
                    }
                }
                if answer.to_string().contains("\"value\"") {
                    failures.push(format!("{}: a token list shows a value", actor.name));
                }
            }
            _ => {}
        }
    }

    /// The state of what `target` names, read by the platform: compared before and after a
    /// refused request.
    async fn snapshot(&self, rule: Rule, target: Target, id: i64) -> Value {
        let path = match (rule, target) {
            // The bootstrap token still works (the snapshot is read with it) and is live.
            (Rule::Retire, _) => format!("/provider/v1/tokens/{}", self.bootstrap_token_id),
            (Rule::OpCreate, _) => "/provider/v1/operators".to_owned(),
            (Rule::TokenCreate, _) => "/provider/v1/tokens".to_owned(),
            (_, Target::None | Target::Missing) => return Value::Null,
            (Rule::OpRead | Rule::OpChange | Rule::OpRemove, _) => {
                format!("/provider/v1/operators/{id}")
            }
            (Rule::TokenRead | Rule::TokenRevoke | Rule::TokenRotate, _) => {
                format!("/provider/v1/tokens/{id}")
            }
            (Rule::PartnerRead | Rule::PartnerEdit, Target::Of(Party::Platform)) => {
                return Value::Null;
            }
            (Rule::PartnerRead | Rule::PartnerEdit, t) => {
                format!("/provider/v1/partners/{}", self.partner_id(t))
            }
            (_, t) => format!("/provider/v1/orgs/{}", self.org_id(t)),
        };
        let (s, mut b) = call(&self.server, self.bootstrap(), Method::GET, &path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {b}");
        b.as_object_mut().map(|o| o.remove("usage"));
        b
    }

    /// An admin of the target org for the admin paths (added by the platform).
    async fn fresh_admin(&self, target: Target, n: usize) -> i64 {
        if target == Target::Missing {
            return MISSING_ID;
        }
        let (s, b) = call(
            &self.server,
            self.bootstrap(),
            Method::POST,
            &format!("/provider/v1/orgs/{}/admins", self.org_id(target)),
            Some(json!({"loginName": format!("extra{n}@m"), "password": PASSWORD, "role": "VIEW_ONLY"})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b["id"].as_i64().unwrap()
    }

    /// Puts the target org's key in the state the operation starts from: disabled by its
    /// own tier before an enable, enabled before a disable.
    async fn prepare_key(&self, path: &str, target: Target) {
        let Target::Of(owner) = target else { return };
        let id = self.org_id(target);
        let by_owner = self
            .actors
            .iter()
            .find(|a| a.tier == Some(owner) && a.role == Role::Owner)
            .unwrap();
        let (op, who, body) = if path.ends_with("/enable") {
            (
                "disable",
                by_owner,
                Some(json!({"reason": "TERMS_VIOLATION"})),
            )
        } else if path.ends_with("/disable") {
            ("enable", self.bootstrap(), None)
        } else {
            return;
        };
        let (s, b) = call(
            &self.server,
            who,
            Method::POST,
            &format!("/provider/v1/orgs/{id}/apiKey/{op}"),
            body,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "prepare {op}: {b}");
    }
}

async fn call(
    server: &TestServer,
    actor: &Actor,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let http = actor.client.as_ref().unwrap_or(&server.http);
    let mut req = http.request(method, server.url(path));
    if let Some(t) = &actor.token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    into_json(req.send().await.expect("request")).await
}

/// A valid body for the operation, unique where it creates something.
fn api_body(w: &World, method: &str, path: &str, target: Target, n: usize) -> Option<Value> {
    Some(match (method, path) {
        ("post", "/provider/v1/operators") => json!({
            "loginName": format!("made{n}"), "displayName": "Made", "password": PASSWORD,
            "role": "AUDITOR",
            "partnerId": match target {
                Target::None => Value::Null,
                t => json!(w.partner_id(t)),
            },
        }),
        // Its own name again: allowed or not, nothing changes.
        ("patch", "/provider/v1/operators/{id}") => json!({"displayName": w.target_name(target)}),
        ("post", "/provider/v1/tokens") => json!({
            "label": format!("matrix {n}"),
            "operatorId": w.target_op_id(target),
        }),
        ("post", "/provider/v1/orgs") => json!({
            "name": format!("made {n}"),
            "subscription": {"enabled": false, "expiresAt": null},
        }),
        (_, p) if p.ends_with("/subscription") => json!({"enabled": true, "expiresAt": null}),
        (_, p) if p.ends_with("/disable") => json!({"reason": "TERMS_VIOLATION"}),
        ("post", p) if p.ends_with("/admins") => {
            json!({"loginName": format!("added{n}@m"), "password": PASSWORD, "role": "FULL"})
        }
        (_, p) if p.ends_with("/limits") => json!({"callThreshold": null, "rateLimits": null}),
        // The same owner: the move is allowed or not, and nothing moves.
        (_, p) if p.ends_with("/partner") => json!({"partnerId": match target {
            Target::Of(Party::Platform) | Target::Missing | Target::None => Value::Null,
            t => json!(w.partner_id(t)),
        }}),
        (_, p) if p.ends_with("/baseUrl") => json!({"baseUrl": "https://api.example.com/api/v1"}),
        ("post", "/provider/v1/partners") => json!({"name": format!("New partner {n}")}),
        ("put", "/provider/v1/partners/{id}") => {
            let (name, url) = match target {
                Target::Of(Party::P) => ("Partner P", "https://partner-p.example/help"),
                _ => ("Partner Q", "https://partner-q.example/help"),
            };
            json!({"name": name, "supportUrl": url, "supportEmail": "help@partner.example"})
        }
        _ => return None,
    })
}

fn targets(rule: Rule) -> Vec<Target> {
    use Party::*;
    use Target::*;
    match rule {
        Rule::OpList | Rule::TokenList | Rule::Retire => vec![None],
        Rule::OpCreate => vec![None, Of(P), Of(Q), Missing],
        Rule::OpRead | Rule::OpChange | Rule::OpRemove => {
            vec![Of(Platform), Of(P), Of(Q), Missing]
        }
        Rule::TokenCreate => vec![None, Of(Platform), Of(P), Of(Q), Missing],
        Rule::TokenRead | Rule::TokenRevoke | Rule::TokenRotate => {
            vec![Of(Platform), Of(P), Of(Q), Bootstrap, Missing]
        }
        Rule::OrgList | Rule::OrgCreate | Rule::PartnerList | Rule::PartnerCreate => {
            vec![Target::None]
        }
        Rule::NotScoped => vec![],
        Rule::PartnerRead | Rule::PartnerEdit => {
            vec![Target::Of(Party::P), Target::Of(Party::Q), Target::Missing]
        }
        _ => vec![
            Target::Of(Party::Platform),
            Target::Of(Party::P),
            Target::Of(Party::Q),
            Target::Missing,
        ],
    }
}

fn status_of(e: Expect, got: StatusCode, console_get: Option<bool>) -> bool {
    match (e, console_get) {
        (Expect::Ok, None) => got.is_success(),
        (Expect::Ok, Some(true)) => got == StatusCode::OK,
        // A console form answers with a redirect, or (a token made) the page showing it.
        (Expect::Ok, Some(false)) => got == StatusCode::SEE_OTHER || got == StatusCode::CREATED,
        (Expect::BadRequest, _) => got == StatusCode::BAD_REQUEST,
        (Expect::NotFound, _) => got == StatusCode::NOT_FOUND,
        (Expect::Forbidden, _) => got == StatusCode::FORBIDDEN,
        (Expect::Unauthorized, None) => got == StatusCode::UNAUTHORIZED,
        (Expect::Unauthorized, Some(_)) => got == StatusCode::SEE_OTHER,
    }
}

/// The ids of the orgs (or partners) in a list answer.
fn ids_in(list: &Value) -> BTreeSet<i64> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn cross_tenant_matrix_of_the_provider_api() {
    let w = World::build().await;

    // Every operation of the document has a row, and every row an operation.
    let doc: Value = w
        .server
        .http
        .get(w.server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.starts_with("/provider/"))
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "put", "post", "delete", "patch"].contains(&m.as_str()))
                .map(|m| (m.clone(), p.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let rows: BTreeSet<(String, String)> = API
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, rows,
        "the matrix has exactly one row per provider operation (left: the document)"
    );

    let mut n = 0;
    let mut failures = Vec::new();
    let mut deferred = 0;
    for (method, template, rule) in API {
        for target in targets(*rule) {
            for actor in &w.actors {
                n += 1;
                let want = expect(*rule, actor, target);
                if retires_bootstrap(*rule, target, want) {
                    deferred += 1;
                    continue;
                }
                w.prepare_key(template, target).await;
                let id = w.id_for(*rule, target).await;
                let mut path = template.replace("{id}", &id.to_string());
                if path.contains("{adminId}") {
                    path = path.replace("{adminId}", &w.fresh_admin(target, n).await.to_string());
                }
                let before = w.snapshot(*rule, target, id).await;
                let body = api_body(&w, method, template, target, n);
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let (got, answer) = call(&w.server, actor, m, &path, body).await;
                if got.is_success() {
                    w.consumed(*rule, target);
                }
                if !status_of(want, got, None) {
                    failures.push(format!(
                        "{} {method} {path} ({target:?}): want {want:?}, got {got} {answer}",
                        actor.name
                    ));
                    continue;
                }
                if want != Expect::Ok {
                    let after = w.snapshot(*rule, target, id).await;
                    if before != after {
                        failures.push(format!(
                            "{} {method} {path}: refused but changed\n{before}\n{after}",
                            actor.name
                        ));
                    }
                    // A 404 for an org one may not see says what one for a missing id says.
                    if want == Expect::NotFound {
                        assert_eq!(answer["code"], "NOT_FOUND", "{answer}");
                        assert!(
                            [
                                "No such org",
                                "No such partner",
                                "No such operator",
                                "No such token"
                            ]
                            .contains(&answer["message"].as_str().unwrap_or_default()),
                            "{answer}"
                        );
                    }
                    if want == Expect::Forbidden {
                        let code = if rule.of_operators() {
                            "OPERATOR_ROLE_NOT_ALLOWED"
                        } else {
                            "FORBIDDEN"
                        };
                        assert_eq!(answer["code"], code, "{answer}");
                    }
                }
                if want == Expect::Ok && *method == "get" {
                    w.check_operator_list(template, actor, &answer, &mut failures);
                }
                // Lists hold only what the caller may see.
                if want == Expect::Ok && *method == "get" {
                    let tier = actor.tier.unwrap();
                    if *template == "/provider/v1/orgs" {
                        let ids = ids_in(&answer);
                        let seen = &w.seen[&tier];
                        for (party, id) in &w.org {
                            assert_eq!(
                                ids.contains(id),
                                seen.contains(id),
                                "{}: org of {party:?} listed?",
                                actor.name
                            );
                        }
                        if tier != Party::Platform {
                            // Everything listed is the partner's own.
                            for o in answer["items"].as_array().unwrap() {
                                assert_eq!(o["partnerId"].as_i64(), Some(w.partner[&tier]));
                            }
                        }
                    }
                    if *template == "/provider/v1/partners" {
                        let ids = ids_in(&answer);
                        for (party, id) in &w.partner {
                            assert_eq!(
                                ids.contains(id),
                                sees(tier, *party),
                                "{}: partner {party:?} listed?",
                                actor.name
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(n > 500, "{n} requests");
    assert!(
        failures.is_empty(),
        "{} of {n}:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Last, what the matrix skipped to keep signing with the bootstrap token (its two
    // platform OWNERs × retire and revoke-the-bootstrap-token): the platform's OWNER
    // operator retires it, and it is refused from then on.
    assert_eq!(deferred, 4);
    let owner = w.platform_owner();
    let (s, b) = call(
        &w.server,
        owner,
        Method::POST,
        "/provider/v1/bootstrap/retire",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let (s, _) = call(
        &w.server,
        w.bootstrap(),
        Method::GET,
        "/provider/v1/orgs",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

// ------------------------------------------------------------------ the console

/// A browser over plain HTTP keeping its cookies, following no redirect.
struct Page {
    http: Client,
    base: String,
    cookies: Vec<(String, String)>,
    csrf: String,
}

impl Page {
    fn new(base: &str) -> Page {
        Page {
            http: Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: base.to_owned(),
            cookies: Vec::new(),
            csrf: String::new(),
        }
    }

    fn keep(&mut self, h: &HeaderMap) {
        for c in h.get_all("set-cookie") {
            let pair = c.to_str().unwrap().split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != k);
            if !v.is_empty() {
                self.cookies.push((k.to_owned(), v.to_owned()));
            }
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn get(&mut self, path: &str) -> (StatusCode, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("Cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        let s = r.status();
        self.keep(&r.headers().clone());
        (s, r.text().await.unwrap())
    }

    async fn post(&mut self, path: &str, fields: &[(&str, String)]) -> (StatusCode, String) {
        let mut all: Vec<(&str, String)> = vec![("csrf", self.csrf.clone())];
        all.extend(fields.iter().cloned());
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Cookie", self.cookie_header())
            .header("Origin", &self.base)
            .form(&all)
            .send()
            .await
            .unwrap();
        let s = r.status();
        self.keep(&r.headers().clone());
        (s, r.text().await.unwrap())
    }

    /// Signs in with a provider token (none: stays signed out).
    async fn sign_in(&mut self, token: Option<&str>) {
        let (_, html) = self.get("/console/login").await;
        self.csrf = csrf_in(&html);
        let Some(token) = token else { return };
        let (s, body) = self
            .post("/console/login", &[("token", token.to_owned())])
            .await;
        assert_eq!(s, StatusCode::SEE_OTHER, "{body}");
        let (s, html) = self.get("/console/orgs").await;
        assert_eq!(s, StatusCode::OK);
        self.csrf = csrf_in(&html);
    }
}

fn csrf_in(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field");
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// The form fields of a console post, unique where it creates something.
fn console_fields(w: &World, path: &str, target: Target, n: usize) -> Vec<(&'static str, String)> {
    let s = |v: &str| v.to_owned();
    match path {
        "/console/operators" => vec![
            ("login_name", format!("cmade{n}")),
            ("display_name", s("Made")),
            ("password", s(PASSWORD)),
            ("role", s("AUDITOR")),
        ],
        "/console/operators/{id}/edit" => vec![
            ("display_name", w.target_name(target)),
            ("role", s("")),
            ("password", s("")),
        ],
        "/console/tokens" => vec![
            ("label", format!("console matrix {n}")),
            ("expires_at", s("")),
            (
                "operator_id",
                match w.target_op_id(target) {
                    Value::Null => String::new(),
                    v => v.to_string(),
                },
            ),
        ],
        "/console/orgs" => vec![
            ("name", format!("console made {n}")),
            ("full_login", format!("cfull{n}@m")),
            ("full_password", s(PASSWORD)),
        ],
        p if p.ends_with("/key/disable") => vec![("reason", s("TERMS_VIOLATION")), ("note", s(""))],
        p if p.ends_with("/subscription") => vec![("action", s("renew")), ("expires_at", s(""))],
        p if p.ends_with("/limits") => vec![("calls", s("")), ("period_seconds", s(""))],
        p if p.ends_with("/admins") => vec![
            ("login_name", format!("cadded{n}@m")),
            ("password", s(PASSWORD)),
            ("role", s("FULL")),
        ],
        p if p.ends_with("/base-url") => vec![("base_url", s("https://api.example.com/api/v1"))],
        p if p.ends_with("/partner") => vec![(
            "partner_id",
            match target {
                Target::Of(Party::P) | Target::Of(Party::Q) => w.partner_id(target).to_string(),
                _ => String::new(),
            },
        )],
        "/console/partners" => vec![("name", format!("Console partner {n}"))],
        "/console/partners/{id}" => match target {
            Target::Of(Party::P) => vec![
                ("name", s("Partner P")),
                ("support_url", s("https://partner-p.example/help")),
                ("support_email", s("help@partner.example")),
            ],
            _ => vec![
                ("name", s("Partner Q")),
                ("support_url", s("https://partner-q.example/help")),
                ("support_email", s("help@partner.example")),
            ],
        },
        _ => vec![],
    }
}

#[tokio::test]
async fn cross_tenant_matrix_of_the_provider_console() {
    let w = World::build().await;

    // Every route of the console has a row, and every row a route (read from the router).
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/http/pages/console.rs"
    ))
    .unwrap();
    let mut routes = BTreeSet::new();
    let flat: String = source.split_whitespace().collect::<Vec<_>>().join(" ");
    for piece in flat.split(".route(").skip(1) {
        let path = piece.split('"').nth(1).unwrap().to_owned();
        let handlers = piece.split(')').take(3).collect::<Vec<_>>().join(")");
        for m in ["get", "post"] {
            if handlers.contains(&format!("{m}(")) {
                routes.insert((m.to_owned(), path.clone()));
            }
        }
    }
    let rows: BTreeSet<(String, String)> = CONSOLE
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(routes, rows, "one row per console route (left: the router)");

    // Everyone but the org admin signs in with its token; the wrong token and the admin
    // stay signed out.
    let mut pages = Vec::new();
    for actor in &w.actors {
        let mut page = Page::new(&w.server.base);
        let token = actor.tier.and(actor.token.as_deref());
        page.sign_in(token).await;
        pages.push(page);
    }
    let mut n = 1000;
    let mut failures = Vec::new();
    let mut deferred = 0;
    for (method, template, rule) in CONSOLE {
        // The console's operator form names no partner: one's own tier.
        let targets = targets(*rule)
            .into_iter()
            .filter(|t| *rule != Rule::OpCreate || *t == Target::None);
        for target in targets {
            for (actor, page) in w.actors.iter().zip(pages.iter_mut()) {
                n += 1;
                let want = expect(*rule, actor, target);
                if retires_bootstrap(*rule, target, want) {
                    deferred += 1;
                    continue;
                }
                let api_like =
                    template.replace("/console/orgs/{id}/key/", "/provider/v1/orgs/{id}/apiKey/");
                w.prepare_key(&api_like, target).await;
                let id = w.id_for(*rule, target).await;
                let mut path = template.replace("{id}", &id.to_string());
                if path.contains("{admin_id}") {
                    path = path.replace("{admin_id}", &w.fresh_admin(target, n).await.to_string());
                }
                let before = w.snapshot(*rule, target, id).await;
                let (got, html) = if *method == "get" {
                    page.get(&path).await
                } else {
                    let fields = console_fields(&w, template, target, n);
                    page.post(&path, &fields).await
                };
                if (got == StatusCode::SEE_OTHER || got == StatusCode::CREATED)
                    && actor.tier.is_some()
                {
                    w.consumed(*rule, target);
                }
                if !status_of(want, got, Some(*method == "get")) {
                    failures.push(format!(
                        "{} {method} {path} ({target:?}): want {want:?}, got {got}",
                        actor.name
                    ));
                    continue;
                }
                if want != Expect::Ok {
                    let after = w.snapshot(*rule, target, id).await;
                    if before != after {
                        failures.push(format!(
                            "{} {method} {path}: refused but changed",
                            actor.name
                        ));
                    }
                }
                if want == Expect::Ok && *method == "get" && *template == "/console/orgs" {
                    let tier = actor.tier.unwrap();
                    for (party, id) in &w.org {
                        let listed = html.contains(&format!("data-org-id=\"{id}\""));
                        assert_eq!(
                            listed,
                            w.seen[&tier].contains(id),
                            "{}: org of {party:?} on the page?",
                            actor.name
                        );
                    }
                }
                if want == Expect::Ok && *method == "get" && *template == "/console/partners" {
                    let tier = actor.tier.unwrap();
                    for (party, id) in &w.partner {
                        let listed = html.contains(&format!("data-partner-id=\"{id}\""));
                        assert_eq!(
                            listed,
                            sees(tier, *party),
                            "{}: partner {party:?}",
                            actor.name
                        );
                    }
                }
                if want == Expect::NotFound {
                    // Nothing of another party's org or operators on the page.
                    for party in w.org.keys() {
                        if !sees(actor.tier.unwrap(), *party) {
                            let name = format!("Org of {}", format!("{party:?}").to_lowercase());
                            assert!(!html.contains(&name), "{name}: {html}");
                            let login = format!("target-{party:?}").to_lowercase();
                            assert!(!html.contains(&login), "{login}: {html}");
                        }
                    }
                }
                if want == Expect::Ok && *method == "get" && *template == "/console/operators" {
                    let tier = actor.tier.unwrap();
                    for party in w.target_op.keys() {
                        let login = format!("target-{party:?}").to_lowercase();
                        if html.contains(&login) != sees(tier, *party) {
                            failures.push(format!("{}: {login} on the page?", actor.name));
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n}:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Last, what the matrix skipped to keep signing with the bootstrap token: the platform's
    // OWNER operator revokes it on the token page, and it is refused from then on.
    assert_eq!(deferred, 2);
    let at = w
        .actors
        .iter()
        .position(|a| a.tier == Some(Party::Platform) && a.role == Role::Owner && a.op.is_some())
        .unwrap();
    let (s, _) = pages[at]
        .post(
            &format!("/console/tokens/{}/revoke", w.bootstrap_token_id),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (s, _) = call(
        &w.server,
        w.bootstrap(),
        Method::GET,
        "/provider/v1/orgs",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

// ------------------------------------------------------------------ who disabled it

async fn org_of(server: &TestServer, token: &str, id: i64) -> (StatusCode, Value) {
    let r = server
        .http
        .get(server.url(&format!("/provider/v1/orgs/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    into_json(r).await
}

async fn post_as(
    server: &TestServer,
    token: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = server.http.post(server.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    into_json(req.send().await.unwrap()).await
}

async fn put_as(server: &TestServer, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let r = server
        .http
        .put(server.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    into_json(r).await
}

/// A partner "Acme Networks" with its OPERATOR's token and an org of it (admins
/// `full@acme`, `view@acme`).
async fn partner_with_org(server: &TestServer) -> (i64, String, i64) {
    let (s, p) = server
        .provider(
            Method::POST,
            "/provider/v1/partners",
            Some(json!({"name": "Acme Networks", "supportUrl": "https://support.acme.example/keys", "supportEmail": "noc@acme.example"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let pid = p["id"].as_i64().unwrap();
    let token = operator_token(server, Some(pid), "OPERATOR", "acme-op").await;
    let (s, org) = post_as(
        server,
        &token,
        "/provider/v1/orgs",
        Some(json!({
            "name": "Acme customer",
            "admins": [
                {"loginName": "full@acme", "password": PASSWORD, "role": "FULL"},
                {"loginName": "view@acme", "password": PASSWORD, "role": "VIEW_ONLY"},
            ],
            "subscription": {"enabled": true, "expiresAt": null},
        })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{org}");
    assert_eq!(org["partnerId"], pid);
    (pid, token, org["id"].as_i64().unwrap())
}

#[tokio::test]
async fn a_partner_cannot_re_enable_what_the_platform_disabled_and_the_platform_can() {
    let server = TestServer::start_with(|c| {
        c.platform.name = "Example Cloud".into();
        c.platform.support_url = Some("https://help.example-cloud.test".into());
    })
    .await;
    let (_pid, token, org) = partner_with_org(&server).await;
    let disable = format!("/provider/v1/orgs/{org}/apiKey/disable");
    let enable = format!("/provider/v1/orgs/{org}/apiKey/enable");

    // The partner disables and re-enables its own org's key.
    let (s, b) = post_as(
        &server,
        &token,
        &disable,
        Some(json!({"reason": "TERMS_VIOLATION"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = post_as(&server, &token, &enable, None).await;
    assert_eq!(
        (s, b["keyStatus"].as_str()),
        (StatusCode::OK, Some("ENABLED")),
        "{b}"
    );

    // The platform disables: the partner cannot re-enable it, and nothing changes.
    let (s, _) = post_as(
        &server,
        PROVIDER_TOKEN,
        &disable,
        Some(json!({"reason": "OTHER", "note": "fraud review"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let before = org_of(&server, PROVIDER_TOKEN, org).await.1;
    let refused = post_as(&server, &token, &enable, None).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "DISABLED_BY_PLATFORM");
    let after = org_of(&server, PROVIDER_TOKEN, org).await.1;
    assert_eq!(before["keyStatus"], "DISABLED");
    assert_eq!(before["keyGeneration"], after["keyGeneration"]);
    assert_eq!(after["keyStatus"], "DISABLED");

    // The admin's key page says who, and whom to contact.
    let admin = server.login("full@acme").await;
    let html = portal_key_html(&server, "full@acme").await;
    assert!(html.contains("disabled by Example Cloud"), "{html}");
    assert!(html.contains("https://help.example-cloud.test"), "{html}");
    drop(admin);

    // The platform re-enables it.
    let (s, b) = post_as(&server, PROVIDER_TOKEN, &enable, None).await;
    assert_eq!(
        (s, b["keyStatus"].as_str()),
        (StatusCode::OK, Some("ENABLED")),
        "{b}"
    );

    // A partner's disablement: the platform may re-enable it too; the portal names the
    // partner and its contacts.
    let (s, _) = post_as(
        &server,
        &token,
        &disable,
        Some(json!({"reason": "TERMS_VIOLATION"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let html = portal_key_html(&server, "full@acme").await;
    assert!(
        html.contains("disabled by your service provider Acme Networks"),
        "{html}"
    );
    assert!(
        html.contains("https://support.acme.example/keys") && html.contains("noc@acme.example"),
        "{html}"
    );
    let (s, _) = post_as(&server, PROVIDER_TOKEN, &enable, None).await;
    assert_eq!(s, StatusCode::OK);

    // The audit of the disablement records the tier and the partner.
    let (_, audit) = server
        .provider(Method::GET, &format!("/provider/v1/orgs/{org}/audit"), None)
        .await;
    let disables: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "KEY_DISABLE")
        .collect();
    assert_eq!(disables.len(), 3);
    assert_eq!(disables[0]["details"]["disabledTier"], "PARTNER");
    assert_eq!(disables[1]["details"]["disabledTier"], "PLATFORM");
}

/// The key page's HTML for an admin, over plain HTTP.
async fn portal_key_html(server: &TestServer, login: &str) -> String {
    let http = Client::builder().cookie_store(true).build().unwrap();
    let r = http.get(server.url("/portal/login")).send().await.unwrap();
    let html = r.text().await.unwrap();
    let csrf = csrf_in(&html);
    let r = http
        .post(server.url("/portal/login"))
        .header("Origin", &server.base)
        .form(&[
            ("csrf", csrf.as_str()),
            ("login_name", login),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let html = r.text().await.unwrap();
    assert!(html.contains("Cloud Service API Key"), "{html}");
    html
}

#[tokio::test]
async fn the_key_object_names_the_partner_and_the_org_base_url() {
    let server = TestServer::start().await;
    let (pid, token, org) = partner_with_org(&server).await;
    let path = format!("/provider/v1/orgs/{org}/baseUrl");

    // Bad URLs: 400 naming the field, nothing changed.
    for bad in [
        json!("ftp://x.example"),
        json!("/api/v1"),
        json!("https://"),
        json!("https://u:p@h.example"),
        json!(""),
        json!(12),
    ] {
        let got = put_as(&server, &token, &path, json!({"baseUrl": bad})).await;
        assert_error(&got, StatusCode::BAD_REQUEST, "INVALID_INPUT_ARGUMENT");
        assert_eq!(got.1["field"], "baseUrl", "{bad}: {}", got.1);
    }
    assert_eq!(org_of(&server, &token, org).await.1["baseUrl"], Value::Null);

    // The owning partner sets it; the admin's key object and page show it.
    let (s, b) = put_as(
        &server,
        &token,
        &path,
        json!({"baseUrl": "https://zsapi.acme.example/api/v1"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["baseUrl"], "https://zsapi.acme.example/api/v1");
    let admin = server.login("full@acme").await;
    let (_, key) = admin.key().await;
    let key = if key.is_array() { key[0].clone() } else { key };
    assert_eq!(key["baseUrl"], "https://zsapi.acme.example/api/v1", "{key}");
    assert_eq!(key["partner"]["id"], pid, "{key}");
    assert_eq!(key["partner"]["name"], "Acme Networks");
    assert_eq!(key["partnerUrl"], "https://support.acme.example/keys");
    let html = portal_key_html(&server, "full@acme").await;
    assert!(html.contains("https://zsapi.acme.example/api/v1"));

    // Another partner: 404, as for an org that does not exist.
    let (s, q) = server
        .provider(
            Method::POST,
            "/provider/v1/partners",
            Some(json!({"name": "Other"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let other = operator_token(&server, q["id"].as_i64(), "OWNER", "other-owner").await;
    let got = put_as(
        &server,
        &other,
        &path,
        json!({"baseUrl": "https://evil.example"}),
    )
    .await;
    assert_error(&got, StatusCode::NOT_FOUND, "NOT_FOUND");
    let missing = put_as(
        &server,
        &other,
        "/provider/v1/orgs/999999/baseUrl",
        json!({"baseUrl": "https://evil.example"}),
    )
    .await;
    assert_eq!(
        got.1, missing.1,
        "the same answer as for an id that does not exist"
    );

    // The platform resets it to the deployment's.
    let (s, b) = put_as(&server, PROVIDER_TOKEN, &path, json!({"baseUrl": null})).await;
    assert_eq!((s, b["baseUrl"].clone()), (StatusCode::OK, Value::Null));
    let (_, key) = admin.key().await;
    let key = if key.is_array() { key[0].clone() } else { key };
    assert_eq!(key["baseUrl"], format!("{}/api/v1", server.base));
}

#[tokio::test]
async fn moving_an_org_between_partners_moves_who_sees_it() {
    let server = TestServer::start().await;
    let (p, p_token, org) = partner_with_org(&server).await;
    let (_, q) = server
        .provider(
            Method::POST,
            "/provider/v1/partners",
            Some(json!({"name": "Q Services"})),
        )
        .await;
    let q = q["id"].as_i64().unwrap();
    let q_token = operator_token(&server, Some(q), "OWNER", "q-owner").await;
    let p_owner = operator_token(&server, Some(p), "OWNER", "p-owner").await;
    let move_path = format!("/provider/v1/orgs/{org}/partner");

    assert_eq!(org_of(&server, &p_token, org).await.0, StatusCode::OK);
    assert_eq!(
        org_of(&server, &q_token, org).await.0,
        StatusCode::NOT_FOUND
    );
    // Only the platform moves orgs: not even the owning partner's OWNER.
    let got = put_as(&server, &p_owner, &move_path, json!({"partnerId": q})).await;
    assert_error(&got, StatusCode::FORBIDDEN, "FORBIDDEN");
    // A partner that does not exist: 404, nothing moved.
    let got = put_as(
        &server,
        PROVIDER_TOKEN,
        &move_path,
        json!({"partnerId": 999_999}),
    )
    .await;
    assert_error(&got, StatusCode::NOT_FOUND, "NOT_FOUND");
    assert_eq!(org_of(&server, &p_token, org).await.0, StatusCode::OK);

    let (s, b) = put_as(&server, PROVIDER_TOKEN, &move_path, json!({"partnerId": q})).await;
    assert_eq!(
        (s, b["partnerId"].as_i64()),
        (StatusCode::OK, Some(q)),
        "{b}"
    );
    assert_eq!(
        org_of(&server, &p_token, org).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(org_of(&server, &q_token, org).await.0, StatusCode::OK);
    let list = |t: String| {
        let server = &server;
        async move {
            let r = server
                .http
                .get(server.url("/provider/v1/orgs"))
                .bearer_auth(t)
                .send()
                .await
                .unwrap();
            ids_in(&into_json(r).await.1)
        }
    };
    assert!(!list(p_token.clone()).await.contains(&org));
    assert!(list(q_token.clone()).await.contains(&org));
    // Q now reads the org's audit, including the move; P does not.
    let r = server
        .http
        .get(server.url(&format!("/provider/v1/orgs/{org}/audit")))
        .bearer_auth(&q_token)
        .send()
        .await
        .unwrap();
    let (s, audit) = into_json(r).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "ORG_MOVE")
    );

    // Back to the platform: neither partner sees it.
    let (s, _) = put_as(
        &server,
        PROVIDER_TOKEN,
        &move_path,
        json!({"partnerId": null}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        org_of(&server, &q_token, org).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        org_of(&server, &p_token, org).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn partners_are_validated_and_unique() {
    let server = TestServer::start().await;
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (
            json!({"name": "X", "supportUrl": "mailto:x@y.z"}),
            "supportUrl",
        ),
        (
            json!({"name": "X", "supportEmail": "not an address"}),
            "supportEmail",
        ),
    ] {
        let got = server
            .provider(Method::POST, "/provider/v1/partners", Some(body))
            .await;
        assert_error(&got, StatusCode::BAD_REQUEST, "INVALID_INPUT_ARGUMENT");
        assert_eq!(got.1["field"], field);
    }
    let (_, list) = server
        .provider(Method::GET, "/provider/v1/partners", None)
        .await;
    assert!(
        list["items"].as_array().unwrap().is_empty(),
        "nothing was created"
    );
    let (s, _) = server
        .provider(
            Method::POST,
            "/provider/v1/partners",
            Some(json!({"name": "Same"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let got = server
        .provider(
            Method::POST,
            "/provider/v1/partners",
            Some(json!({"name": "Same"})),
        )
        .await;
    assert_error(&got, StatusCode::CONFLICT, "NAME_TAKEN");
}

/// In Chromium: a partner's disablement shows the partner's notice and its contact on the
/// key page; after the platform re-enables it the notice is gone.
#[tokio::test]
async fn browser_a_partner_disablement_shows_the_partner_and_its_contact() {
    let server = TestServer::start().await;
    let (_pid, token, org) = partner_with_org(&server).await;
    let (s, _) = post_as(
        &server,
        &token,
        &format!("/provider/v1/orgs/{org}/apiKey/disable"),
        Some(json!({"reason": "TERMS_VIOLATION", "note": "unpaid invoice"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    crate::browser::with_browser("browser_partner_disablement", move |ui| async move {
        let ui = ui.on(&server);
        ui.portal_login("full@acme").await;
        let banner = ui.text("#banner-disabled").await;
        assert!(
            banner.contains("disabled by your service provider Acme Networks"),
            "{banner}"
        );
        assert!(banner.contains("unpaid invoice"), "{banner}");
        assert_eq!(
            ui.text("#contact-url").await,
            "https://support.acme.example/keys"
        );
        assert_eq!(ui.text("#contact-email").await, "noc@acme.example");
        ui.shot("tiers-partner-disabled").await;
        let (s, _) = post_as(
            &server,
            PROVIDER_TOKEN,
            &format!("/provider/v1/orgs/{org}/apiKey/enable"),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        ui.goto("/portal/key").await;
        assert!(!ui.has("#banner-disabled").await);
    })
    .await;
}

/// R9's automatic disablement may be re-enabled by the owning partner; an admin of another
/// org is not reachable through one's own org's path.
#[tokio::test]
async fn the_owning_partner_re_enables_after_r9_and_reaches_only_its_own_admins() {
    let server = TestServer::start().await;
    let (_pid, token, org) = partner_with_org(&server).await;
    let (s, _) = put_as(
        &server,
        &token,
        &format!("/provider/v1/orgs/{org}/limits"),
        json!({"callThreshold": {"calls": 2, "periodSeconds": 3600}, "rateLimits": crate::enforcement::generous()}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let full = server.login("full@acme").await.reveal().await;
    let api = crate::cloud_api::api_login(&server, "full@acme", &full).await;
    let mut tripped = false;
    for _ in 0..5 {
        let (s, _) = api.get("/api/v1/apiKeys").await;
        if s == StatusCode::FORBIDDEN {
            tripped = true;
            break;
        }
    }
    assert!(tripped, "the threshold trips");
    let (_, o) = org_of(&server, &token, org).await;
    assert_eq!(o["keyStatus"], "DISABLED");
    assert_eq!(o["keyDisabledReason"], "CALL_THRESHOLD_EXCEEDED");
    let (s, b) = post_as(
        &server,
        &token,
        &format!("/provider/v1/orgs/{org}/apiKey/enable"),
        None,
    )
    .await;
    assert_eq!(
        (s, b["keyStatus"].as_str()),
        (StatusCode::OK, Some("ENABLED")),
        "{b}"
    );

    // Another party's admin through one's own org: 404, and it stays.
    let other = server.create_org("other").await;
    let other_admin = other["admins"][0]["id"].as_i64().unwrap();
    let r = server
        .http
        .delete(server.url(&format!("/provider/v1/orgs/{org}/admins/{other_admin}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let got = into_json(r).await;
    assert_error(&got, StatusCode::NOT_FOUND, "NOT_FOUND");
    let (_, o) = server
        .provider(
            Method::GET,
            &format!("/provider/v1/orgs/{}", other["id"]),
            None,
        )
        .await;
    assert_eq!(o["admins"].as_array().unwrap().len(), 2);
}

/// A partner's new name and support URL are in its orgs' key objects at once, though the
/// node keeps each org's rendered key list.
#[tokio::test]
async fn a_renamed_partner_is_in_the_key_objects_at_once() {
    let server = TestServer::start().await;
    let (pid, _token, org) = partner_with_org(&server).await;
    let (s, _) = put_as(
        &server,
        PROVIDER_TOKEN,
        &format!("/provider/v1/orgs/{org}/limits"),
        json!({"callThreshold": null, "rateLimits": crate::enforcement::generous()}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let full = server.login("full@acme").await.reveal().await;
    let api = crate::cloud_api::api_login(&server, "full@acme", &full).await;
    for _ in 0..2 {
        let (s, keys) = api.get("/api/v1/apiKeys").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(keys[0]["partner"]["name"], "Acme Networks", "{keys}");
    }
    let (s, b) = put_as(
        &server,
        PROVIDER_TOKEN,
        &format!("/provider/v1/partners/{pid}"),
        json!({"name": "Acme Renamed", "supportUrl": "https://new.acme.example"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, keys) = api.get("/api/v1/apiKeys").await;
    assert_eq!(keys[0]["partner"]["name"], "Acme Renamed", "{keys}");
    assert_eq!(keys[0]["partnerUrl"], "https://new.acme.example");
}
