use super::*;
use proptest::prelude::*;

fn p(text: &str) -> Result<Vec<Rule>, RulesError> {
    parse(Path::new("rules.toml"), text)
}

fn msg(text: &str) -> String {
    p(text).unwrap_err().to_string()
}

#[test]
fn parses_both_kinds() {
    let rules = p(r#"
[[rule]]
device = "46f4:0001"
serial = "DISK1"
domain = "guest1"

[[rule]]
busid = "1-1.4"
domain = 3
controller = 0
port = 2
"#)
    .unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[0].matcher,
        Match::Id {
            vid: 0x46f4,
            pid: 1,
            serial: Some("DISK1".into())
        }
    );
    assert_eq!(rules[0].domain, DomainRef::Name("guest1".into()));
    assert_eq!(rules[0].line, 2);
    assert_eq!(rules[1].matcher, Match::Busid("1-1.4".into()));
    assert_eq!(rules[1].domain, DomainRef::Id(3));
    assert_eq!((rules[1].controller, rules[1].port), (Some(0), Some(2)));
    assert_eq!(rules[1].line, 7);
    assert!(p("").unwrap().is_empty());
}

#[test]
fn errors_name_file_and_line() {
    assert_eq!(
        msg("[[rule]]\ndevice = \"46f4:1\"\ndomain = \"g\"\n"),
        "rules.toml:2: device = \"46f4:1\": expected vid:pid in hex, e.g. \"46f4:0001\""
    );
    assert_eq!(
        msg("[[rule]]\nbusid = \"1-1\"\n"),
        "rules.toml:1: rule needs domain = (name or id)"
    );
    assert_eq!(
        msg("\n[[rule]]\ndomain = \"g\"\n"),
        "rules.toml:2: rule needs device = or busid ="
    );
    assert_eq!(
        msg("[[rule]]\nbusid = \"../x\"\ndomain = 1\n"),
        "rules.toml:2: busid = \"../x\": not a USB bus id (e.g. \"3-1.5\")"
    );
    assert_eq!(
        msg("[[rule]]\nbusid = \"1-1\"\ndomain = 1\ncontroller = 0\nport = 40\n"),
        "rules.toml:5: port = 40: must be 1..=31"
    );
    assert_eq!(
        msg("[[rule]]\nbusid = \"1-1\"\ndomain = 1\nport = 2\n"),
        "rules.toml:4: port = needs controller ="
    );
    assert_eq!(
        msg("[[rule]]\nbusid = \"1-1\"\ndomain = -1\n"),
        "rules.toml:3: domain = -1: not a domid"
    );
    assert!(msg("[[rule]]\nbusid = \"1-1\"\ndomain = 1\ncolour = 2\n")
        .starts_with("rules.toml:4: unknown field `colour`"));
    assert!(msg("[[rule]\n").starts_with("rules.toml:1: "));
    assert!(msg("x = 1\n\n[[rule]]\nbusid = ").starts_with("rules.toml:"));
}

#[test]
fn matching() {
    let dev = HostDevice {
        busid: "1-2".into(),
        bus: 1,
        device: 3,
        vid: 0x46f4,
        pid: 1,
        class: 0,
        speed: "480".into(),
        manufacturer: None,
        product: None,
        serial: Some("A".into()),
    };
    let rule = |m| Rule {
        matcher: m,
        domain: DomainRef::Id(1),
        controller: None,
        port: None,
        line: 1,
    };
    assert!(rule(Match::Busid("1-2".into())).matches(&dev));
    assert!(!rule(Match::Busid("1-3".into())).matches(&dev));
    assert!(rule(Match::Id {
        vid: 0x46f4,
        pid: 1,
        serial: None
    })
    .matches(&dev));
    assert!(rule(Match::Id {
        vid: 0x46f4,
        pid: 1,
        serial: Some("A".into())
    })
    .matches(&dev));
    assert!(!rule(Match::Id {
        vid: 0x46f4,
        pid: 1,
        serial: Some("B".into())
    })
    .matches(&dev));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::test_cases(256)))]
    #[test]
    fn parse_is_total(text in "(\\[\\[rule\\]\\]\n|device = \"[0-9a-f:]{0,10}\"\n|busid = \"[0-9.-]{0,6}\"\n|domain = (\"g\"|[0-9-]{1,6})\n|port = [0-9]{1,3}\n|controller = [0-9]{1,3}\n|[ -~]{0,8}\n){0,10}") {
        if let Err(RulesError::Invalid { line, .. }) = p(&text) {
            prop_assert!(line >= 1 && line <= text.lines().count().max(1) + 1);
        }
    }
}
