//! The invalid-configuration corpus (tests/corpus/invalid) through the filter's own parser:
//! every file is rejected with the expected message, which names the field.

use std::path::Path;

#[test]
fn every_invalid_configuration_is_rejected_with_its_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/invalid");
    let expected = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
    let mut checked = 0;
    for line in expected
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let (name, fragment) = line.split_once(' ').unwrap();
        let bytes = std::fs::read(dir.join(format!("{name}.json"))).unwrap();
        let message = match origin_pull::config::parse(&bytes) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(message.contains(fragment), "{name}: {message}");
        assert!(message.contains("field "), "{name}: {message}");
        assert!(
            !message.contains('\n') && !message.contains('\r'),
            "{name}: {message}"
        );
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} cases");
}

/// `origin-pull check`'s document for a configuration with every origin kind, credentials
/// inline and from the environment, probes, a redirect mirror and the switch: byte for byte the
/// output recorded before `check` was derived from the compiled configuration
/// (tests/corpus/check/every-kind.out).
#[test]
fn check_output_of_every_origin_kind_is_unchanged() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/check");
    let bytes = std::fs::read(dir.join("every-kind.json")).unwrap();
    let env = |name: &str| match name {
        "KID" => Some("AK".to_string()),
        "SEC" => Some("S".to_string()),
        _ => None,
    };
    let config = origin_pull::config::parse_with_env(&bytes, &env).unwrap();
    let shown = serde_json::to_string_pretty(&config.check_document()).unwrap();
    let expected = std::fs::read_to_string(dir.join("every-kind.out")).unwrap();
    assert_eq!(shown, expected.trim_end());
}
