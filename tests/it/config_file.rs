//! The TOML config file and `keygate config check`, against the real binary: precedence
//! (flag > environment > file > default), unknown keys and wrong types named with their line,
//! secret files that others can read refused, secrets redacted, the example file loading,
//! and `serve` running with what the file says.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use reqwest::StatusCode;

use crate::harness::{Process, binary};

/// `keygate ARGS` with only the given `KEYGATE_*` variables (none inherited from the caller).
fn keygate(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(envs.iter().copied());
    cmd.output().expect("run keygate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// The report line of `key`: (value, source).
fn setting(report: &str, key: &str) -> (String, String) {
    let line = report
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no `{key}` in:\n{report}"));
    let rest = &line[key.len() + 3..];
    let (value, source) = rest.rsplit_once("  # ").expect("a source");
    (value.to_owned(), source.to_owned())
}

#[test]
fn one_setting_in_all_four_places_follows_flag_env_file_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "k.toml", "max_body_bytes = 1111\n", 0o644);
    let file = file.to_str().unwrap();
    let env = [("KEYGATE_MAX_BODY_BYTES", "2222")];
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 4] = [
        (
            &[
                "config",
                "check",
                "--config",
                file,
                "--max-body-bytes",
                "3333",
            ],
            &env,
            "3333",
            "flag",
        ),
        (&["config", "check", "--config", file], &env, "2222", "env"),
        (&["config", "check", "--config", file], &[], "1111", "file"),
        (&["config", "check"], &[], "65536", "default"),
    ];
    for (args, envs, value, source) in cases {
        let out = keygate(args, envs);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(
            setting(&stdout(&out), "max_body_bytes"),
            (value.to_owned(), source.to_owned()),
            "{args:?} {envs:?}"
        );
    }
    // The file named by the environment instead of the flag.
    let out = keygate(&["config", "check"], &[("KEYGATE_CONFIG", file)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(setting(&stdout(&out), "max_body_bytes").1, "file");
}

/// The node cache is on by default (issue 14), and each place can turn it off.
#[test]
fn node_cache_is_on_by_default_and_each_place_turns_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let off = write(dir.path(), "off.toml", "node_cache = false\n", 0o644);
    let off = off.to_str().unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 7] = [
        (&["config", "check"], &[], "true", "default"),
        (
            &["config", "check", "--node-cache=false"],
            &[],
            "false",
            "flag",
        ),
        (&["config", "check", "--node-cache"], &[], "true", "flag"),
        (
            &["config", "check", "--node-cache=true"],
            &[("KEYGATE_NODE_CACHE", "false")],
            "true",
            "flag",
        ),
        (
            &["config", "check"],
            &[("KEYGATE_NODE_CACHE", "false")],
            "false",
            "env",
        ),
        (&["config", "check", "--config", off], &[], "false", "file"),
        (
            &["config", "check", "--config", off],
            &[("KEYGATE_NODE_CACHE", "true")],
            "true",
            "env",
        ),
    ];
    for (args, envs, value, source) in cases {
        let out = keygate(args, envs);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(
            setting(&stdout(&out), "node_cache"),
            (value.to_owned(), source.to_owned()),
            "{args:?} {envs:?}"
        );
    }
    let out = keygate(&["config", "check", "--node-cache=maybe"], &[]);
    assert!(!out.status.success());
}

#[test]
fn unknown_key_and_wrong_type_name_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = write(
        dir.path(),
        "u.toml",
        "listen = \"127.0.0.1:9000\"\n\nmax_body_byte = 10\n",
        0o644,
    );
    for cmd in [
        &["config", "check", "--config"][..],
        &["serve", "--config"][..],
    ] {
        let mut args = cmd.to_vec();
        args.push(unknown.to_str().unwrap());
        let out = keygate(&args, &[]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("`max_body_byte`"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
    }
    let wrong = write(
        dir.path(),
        "w.toml",
        "# comment\nlisten = \"127.0.0.1:9000\"\nmax_body_bytes = \"large\"\n",
        0o644,
    );
    let out = keygate(
        &["config", "check", "--config", wrong.to_str().unwrap()],
        &[],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("key `max_body_bytes`"), "{err}");
    assert!(err.contains("invalid type"), "{err}");
    // A value of the right type outside the flag's range: the flag's own check, same naming.
    let range = write(dir.path(), "r.toml", "\n\nnode_lease_ms = 10\n", 0o644);
    let out = keygate(
        &["config", "check", "--config", range.to_str().unwrap()],
        &[],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("line 3") && err.contains("`node_lease_ms`") && err.contains("500..=60000"),
        "{err}"
    );
    // Not TOML at all.
    let broken = write(dir.path(), "b.toml", "listen = \n", 0o644);
    let out = keygate(
        &["config", "check", "--config", broken.to_str().unwrap()],
        &[],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("line 1"), "{}", stderr(&out));
}

#[test]
fn secret_files_readable_by_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for key in [
        "provider_token_file",
        "master_key_file",
        "database_url_file",
    ] {
        let secret = write(dir.path(), "secret", "value-of-the-secret\n", 0o644);
        let file = write(
            dir.path(),
            "s.toml",
            &format!("{key} = {:?}\n", secret.to_str().unwrap()),
            0o644,
        );
        let out = keygate(
            &["config", "check", "--config", file.to_str().unwrap()],
            &[],
        );
        assert!(!out.status.success(), "{key}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(err.contains("readable by group or others"), "{key}: {err}");
        assert!(!err.contains("value-of-the-secret"), "{err}");
        for mode in [0o640, 0o604] {
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).unwrap();
            let out = keygate(
                &["config", "check", "--config", file.to_str().unwrap()],
                &[],
            );
            assert!(!out.status.success(), "{key} {mode:o}");
        }
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = keygate(
            &["config", "check", "--config", file.to_str().unwrap()],
            &[],
        );
        assert!(out.status.success(), "{key}: {}", stderr(&out));
        // `serve` refuses it the same way before listening.
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = keygate(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--config",
                file.to_str().unwrap(),
            ],
            &[],
        );
        assert!(!out.status.success());
        assert!(stderr(&out).contains("readable by group or others"));
    }
    // A secret written into the config file makes the file a secret.
    let file = write(
        dir.path(),
        "inline.toml",
        "provider_token = \"tok-123456\"\n",
        0o644,
    );
    let out = keygate(
        &["config", "check", "--config", file.to_str().unwrap()],
        &[],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("holds a secret"), "{}", stderr(&out));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = keygate(
        &["config", "check", "--config", file.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn config_check_redacts_every_secret_and_names_sources() {
    let dir = tempfile::tempdir().unwrap();
    let token = "provider-token-in-env-5f3a9c";
    let master = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let db = "postgres://keygate:db-password-77c1@db.example/keygate";
    let file = write(
        dir.path(),
        "s.toml",
        &format!("master_key = {master:?}\nconsole_idle_timeout_secs = 60\n"),
        0o600,
    );
    let out = keygate(
        &[
            "config",
            "check",
            "--config",
            file.to_str().unwrap(),
            "--database-url",
            db,
        ],
        &[("KEYGATE_PROVIDER_TOKEN", token)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout(&out);
    for secret in [token, master, db, "db-password-77c1"] {
        assert!(!report.contains(secret), "secret shown:\n{report}");
        assert!(!stderr(&out).contains(secret));
    }
    assert_eq!(
        setting(&report, "provider_token"),
        ("\"<redacted>\"".into(), "env".into())
    );
    assert_eq!(
        setting(&report, "master_key"),
        ("\"<redacted>\"".into(), "file".into())
    );
    assert_eq!(
        setting(&report, "database_url"),
        ("\"<redacted>\"".into(), "flag".into())
    );
    assert_eq!(
        setting(&report, "console_idle_timeout_secs"),
        ("60".into(), "file".into())
    );
    assert_eq!(
        setting(&report, "api_idle_timeout_secs"),
        ("300".into(), "default".into())
    );
}

#[test]
fn every_serve_flag_has_a_key_and_the_example_file_loads() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/keygate.example.toml");
    let out = keygate(&["config", "check", "--config", example], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout(&out);
    let text = std::fs::read_to_string(example).unwrap();
    let mut set = 0;
    for line in text.lines() {
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        if key.starts_with('#') {
            continue;
        }
        assert_eq!(setting(&report, key).1, "file", "{key}");
        set += 1;
    }
    assert!(set >= 10, "the example sets {set} keys");
    // Every flag of `serve` (but --config itself) is a key of the file.
    let help = keygate(&["serve", "--help"], &[]);
    let help = stdout(&help);
    let flags: Vec<String> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|f| {
            f.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
                .replace('-', "_")
        })
        .filter(|f| !f.is_empty() && f != "config" && f != "help")
        .collect();
    assert!(flags.len() >= 20, "{flags:?}");
    for flag in flags {
        setting(&report, &flag);
    }
}

#[tokio::test]
async fn serve_runs_with_the_file_under_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The file asks for a 100-byte body limit; the test harness passes --listen as a flag,
    // which beats the file's listen.
    let file = write(
        dir.path(),
        "k.toml",
        "listen = \"127.0.0.1:1\"\nmax_body_bytes = 100\n",
        0o644,
    );
    let log = dir.path().join("log");
    let p = Process::start_with(&data, &log, &[("KEYGATE_CONFIG", file.to_str().unwrap())]);
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/admin/v1/login", p.base))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"loginName\":\"a@b.c\",\"password\":\"{}\"}}",
            "x".repeat(200)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let resp = http
        .post(format!("{}/admin/v1/login", p.base))
        .json(&serde_json::json!({"loginName": "a@b.c", "password": "short-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

/// The platform's name and contacts (issue 15): from the file or the environment, checked by
/// the flag's own parser (an http(s) URL, an e-mail address), the key named when wrong.
#[test]
fn platform_contact_settings_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "p.toml",
        "platform_name = \"Example Cloud\"\nplatform_support_url = \"https://help.example.com\"\n",
        0o644,
    );
    let out = keygate(
        &["config", "check", "--config", file.to_str().unwrap()],
        &[("KEYGATE_PLATFORM_SUPPORT_EMAIL", "help@example.com")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout(&out);
    assert_eq!(
        setting(&report, "platform_name"),
        ("\"Example Cloud\"".into(), "file".into())
    );
    assert_eq!(
        setting(&report, "platform_support_url"),
        ("\"https://help.example.com\"".into(), "file".into())
    );
    assert_eq!(
        setting(&report, "platform_support_email"),
        ("\"help@example.com\"".into(), "env".into())
    );
    let out = keygate(&["config", "check"], &[]);
    assert_eq!(
        setting(&stdout(&out), "platform_name"),
        ("\"the platform operator\"".into(), "default".into())
    );
    for (key, bad) in [
        ("platform_support_url", "ftp://help.example.com"),
        ("platform_support_email", "not-an-address"),
        ("platform_name", ""),
    ] {
        let f = write(
            dir.path(),
            "bad.toml",
            &format!("\n{key} = \"{bad}\"\n"),
            0o644,
        );
        let out = keygate(&["config", "check", "--config", f.to_str().unwrap()], &[]);
        assert!(!out.status.success(), "{key} = {bad}");
        let err = stderr(&out);
        assert!(
            err.contains("line 2") && err.contains(&format!("`{key}`")),
            "{err}"
        );
    }
}
