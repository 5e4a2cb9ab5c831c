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
