use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("/etc/b/broadcaster.toml"), Vec::new())
}

/// The `redis` grant as written (what it means is the host's: `broadcaster-host` reads it).
fn redis_grant(publisher: &PublisherConfig) -> &toml::Table {
    publisher.grants.get("redis").expect("a redis grant").as_table().expect("a table")
}

fn parse_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_toml(text, Path::new("/etc/b/broadcaster.toml"), vars)
}

#[test]
fn the_design_example_loads_with_its_defaults() {
    let config = parse(
        r#"
        [outbox]
        url = "sqlite://broadcaster.db"
        [publishers.default]
        backend = "redis-stream"
        [publishers.default.options]
        host = "localhost"
        stream_name = "events"
        [publishers.tenant-a]
        component = "components/router.wasm"
        [publishers.tenant-a.options]
        routes = { "order.*" = "tenant-a:orders" }
        [publishers.tenant-a.grants]
        redis = { host = "localhost", port = 6379, streams = ["tenant-a:*"] }
        [publishers.tenant-a.limits]
        memory = "32MiB"
        call_timeout = "2s"
        "#,
    )
    .unwrap();
    let tenant = &config.publishers["tenant-a"];
    assert_eq!(
        config.kind_of("tenant-a", tenant).unwrap(),
        PublisherKind::Component(PathBuf::from("/etc/b/components/router.wasm"))
    );
    assert_eq!(tenant.limits.memory, ByteSize(32 << 20));
    let grant = redis_grant(tenant);
    assert_eq!(grant.get("port").and_then(toml::Value::as_integer), Some(6379));
    assert!(grant.get("db").is_none() && grant.get("password").is_none());
    let default = &config.publishers["default"];
    assert_eq!(default.limits.call_timeout, Seconds(Duration::from_secs(2)));
}

#[test]
fn an_unknown_key_names_its_full_path() {
    let err =
        parse("[publishers.a]\ncomponent = \"a.wasm\"\n[publishers.a.limits]\nmemroy = 1\n").unwrap_err().to_string();
    assert!(err.contains("/etc/b/broadcaster.toml"), "{err}");
    assert!(err.contains("publishers.a.limits.memroy"), "{err}");
    assert!(err.contains("unknown field `memroy`"), "{err}");
}

#[test]
fn a_wrongly_typed_value_says_what_was_expected() {
    let err = parse("[publishers.a]\ncomponent = \"a.wasm\"\n[publishers.a.limits]\ncall_timeout = \"soon\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("publishers.a.limits.call_timeout"), "{err}");
    assert!(err.contains("not a duration"), "{err}");
}

#[test]
fn a_publisher_must_name_exactly_one_backend_or_component() {
    let neither = parse("[publishers.a]\n").unwrap_err().to_string();
    assert!(neither.contains("publishers.a") && neither.contains("set `backend"), "{neither}");
    let both = parse("[publishers.a]\nbackend = \"redis-stream\"\ncomponent = \"x.wasm\"\n").unwrap_err().to_string();
    assert!(both.contains("not both"), "{both}");
    let unknown = parse("[publishers.a]\nbackend = \"kafka\"\n").unwrap_err().to_string();
    assert!(unknown.contains("publishers.a.backend") && unknown.contains("redis-stream"), "{unknown}");
}

#[test]
fn syntax_errors_carry_the_line() {
    let err = parse("[outbox\nurl = 1").unwrap_err().to_string();
    assert!(err.contains("not valid TOML") && err.contains("line 1"), "{err}");
}

#[test]
fn environment_variables_override_and_extend_the_file() {
    let config = parse_env(
        "[publishers.tenant-a]\ncomponent = \"r.wasm\"\n[publishers.tenant-a.grants.redis]\nstreams = [\"a:*\"]\npassword = \"x\"\n",
        &[
            ("BROADCASTER_OUTBOX__URL", "postgres://localhost/test"),
            ("BROADCASTER_PUBLISHERS__TENANT_A__GRANTS__REDIS__PORT", "6380"),
            ("BROADCASTER_PUBLISHERS__TENANT_A__GRANTS__REDIS__PASSWORD", "1234"),
            ("BROADCASTER_PUBLISHERS__TENANT_A__OPTIONS__ROUTES", "{ \"a.*\" = \"a:1\" }"),
            ("BROADCASTER_CONFIG", "ignored.toml"),
            ("BROADCASTER_CACHE", "/var/tmp/x"),
            ("UNRELATED", "1"),
        ],
    )
    .unwrap();
    assert_eq!(config.outbox.url, "postgres://localhost/test");
    let tenant = &config.publishers["tenant-a"];
    let grant = redis_grant(tenant);
    assert_eq!(grant.get("port").and_then(toml::Value::as_integer), Some(6380));
    assert_eq!(grant.get("password").and_then(toml::Value::as_str), Some("1234"));
    assert_eq!(tenant.options["routes"]["a.*"].as_str(), Some("a:1"));
}

#[test]
fn a_bad_environment_override_names_the_variable() {
    let err = parse_env("", &[("BROADCASTER_OUTBOX____URL", "x")]).unwrap_err().to_string();
    assert!(err.contains("BROADCASTER_OUTBOX____URL"), "{err}");
    let err = parse_env("[outbox]\nurl = \"sqlite://x\"\n", &[("BROADCASTER_OUTBOX__URL__PART", "x")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a table"), "{err}");
}

#[test]
fn options_keep_their_order_when_turned_into_json() {
    let config = parse("[publishers.a]\ncomponent = \"a.wasm\"\n[publishers.a.options]\nz = 1\na = [1.5, true]\nm = { y = 1, b = 2 }\n").unwrap();
    let json = table_to_json(&config.publishers["a"].options);
    assert_eq!(json.to_string(), r#"{"z":1,"a":[1.5,true],"m":{"y":1,"b":2}}"#);
}

#[test]
fn a_bad_key_set_from_the_environment_names_the_variable() {
    let err = parse_env("", &[("BROADCASTER_OUTBOX__URRL", "x")]).unwrap_err().to_string();
    assert!(err.contains("outbox.urrl") && err.contains("BROADCASTER_OUTBOX__URRL"), "{err}");
}

#[test]
fn server_defaults_listen_on_localhost_8080_with_a_1mib_body_cap() {
    let config = parse("").unwrap();
    assert_eq!(config.server.listen_addr().unwrap().to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.max_body.0, 1024 * 1024);
    assert_eq!(config.server.max_batch_events, 1000);
    assert!(config.tokens.is_empty());
}

#[test]
fn an_admin_token_needs_no_publishers_and_tokens_are_not_admin_by_default() {
    let config = parse(
        "[tokens.ops]\nsecret = { secret = \"OPS\" }\nadmin = true\n\
         [tokens.t]\nsecret = { secret = \"T\" }\npublishers = [\"t\"]\n",
    )
    .unwrap();
    assert!(config.tokens["ops"].admin && config.tokens["ops"].publishers.is_empty());
    assert!(!config.tokens["t"].admin);
}

#[test]
fn a_token_written_in_the_file_is_refused_with_the_ways_to_give_one() {
    let err = parse("[tokens.tenant-a]\nsecret = \"plain-text-token-0123\"\npublishers = [\"tenant-a\"]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`tokens.tenant-a.secret`") && err.contains("secret_file") && err.contains("sha256"), "{err}");
    for reaches_nothing in ["publishers = []\n", "", "admin = false\n"] {
        let err =
            parse(&format!("[tokens.t]\nsecret = {{ secret = \"T\" }}\n{reaches_nothing}")).unwrap_err().to_string();
        assert!(err.contains("`tokens.t`") && err.contains("publishers") && err.contains("admin"), "{err}");
    }
    let err =
        parse("[tokens.t]\nsecret = { secret = \"T\" }\npublishers = [\"t\"]\nburst = 5\n").unwrap_err().to_string();
    assert!(err.contains("`tokens.t.burst`") && err.contains("rate"), "{err}");
    let err =
        parse("[tokens.t]\nsecret = { secret = \"T\" }\npublishers = [\"t\"]\nrate = 0\n").unwrap_err().to_string();
    assert!(err.contains("`tokens.t.rate`"), "{err}");
    let err = parse("[server]\nlisten = \"localhost\"\n").unwrap_err().to_string();
    assert!(err.contains("`server.listen`") && err.contains("127.0.0.1:8080"), "{err}");
}

#[test]
fn section_digests_ignore_key_order_but_see_every_value() {
    let a = parse("[relay]\nbatch_size = 10\ninterval = 1\n[publishers.a]\ncomponent = \"a.wasm\"\n[publishers.a.options]\nx = [1, 2]\ny = { z = true }\n").unwrap();
    let reordered = parse("[publishers.a]\ncomponent = \"a.wasm\"\n[publishers.a.options]\ny = { z = true }\nx = [1, 2]\n[relay]\ninterval = 1\nbatch_size = 10\n").unwrap();
    assert_eq!(a.section("relay"), reordered.section("relay"));
    assert_eq!(a.publisher_section("a"), reordered.publisher_section("a"));
    let changed = parse("[relay]\nbatch_size = 10\ninterval = 1\n[publishers.a]\ncomponent = \"a.wasm\"\n[publishers.a.options]\nx = [2, 1]\ny = { z = true }\n").unwrap();
    assert_eq!(a.section("relay"), changed.section("relay"));
    assert_ne!(a.publisher_section("a"), changed.publisher_section("a"), "the order of an array's items is a change");
    let typed = parse("[relay]\nbatch_size = 10\ninterval = \"1\"\n").unwrap();
    assert_ne!(a.section("relay"), typed.section("relay"), "1 and \"1\" differ");
    assert_eq!(a.section("server"), None);
    assert_eq!(a.publisher_section("b"), None);
}
