//! Invites and safety numbers through the real binary: two accounts exchange invite links,
//! see each other's verified keys and the same safety number; tampered links are refused.

use instaconnect_e2e::Home;

fn account(phone: &str, name: &str) -> Home {
    let h = Home::new();
    h.ok(&["account", "create", "--phone", phone, "--name", name]);
    h
}

fn invite(h: &Home) -> String {
    h.json(&["invite"])["link"].as_str().unwrap().to_string()
}

#[test]
fn two_people_exchange_invites_and_see_the_same_safety_number() {
    let asha = account("+919812345678", "Asha");
    let ravi = account("+919812340001", "Ravi");

    let asha_link = invite(&asha);
    assert!(
        asha_link.starts_with("instaconnect://invite/"),
        "{asha_link}"
    );
    let human = asha.ok(&["invite"]);
    assert!(
        human.contains('█') || human.contains('▀'),
        "a QR code is drawn: {human}"
    );

    let added = ravi.json(&["contacts", "add", "--invite", &asha_link]);
    assert_eq!(added["phone"], "+919812345678");
    assert_eq!(added["name"], "Asha");
    assert_eq!(added["verified_keys"], true);
    let asha_peer = asha.json(&["account", "show"])["peer_id"].clone();
    assert_eq!(
        added["peer_id"], asha_peer,
        "the invite links Asha's device"
    );

    let (code, err) = asha.fail(&["contacts", "safety", "Ravi"]);
    assert_eq!(code, 2);
    assert!(err.contains("no contact matches \"Ravi\""), "{err}");
    // A contact added by number alone has no verified keys yet.
    asha.ok(&["contacts", "add", "+919812340001", "--name", "Ravi"]);
    let (code, err) = asha.fail(&["contacts", "safety", "Ravi"]);
    assert_eq!(code, 1);
    assert!(err.contains("no verified keys for +919812340001"), "{err}");
    asha.ok(&["contacts", "add", "--invite", &invite(&ravi)]);

    let a = asha.json(&["contacts", "safety", "Ravi"]);
    let r = ravi.json(&["contacts", "safety", "Asha"]);
    assert_eq!(a["safety_number"], r["safety_number"]);
    assert_eq!(a["qr_payload_hex"], r["qr_payload_hex"]);
    let digits = a["safety_number"].as_str().unwrap();
    assert_eq!(digits.split(' ').count(), 12, "{digits}");

    // A third person's safety number with Ravi differs.
    let meera = account("+919812340002", "Meera");
    meera.ok(&["contacts", "add", "--invite", &invite(&ravi)]);
    assert_ne!(
        meera.json(&["contacts", "safety", "Ravi"])["safety_number"],
        r["safety_number"]
    );
}

#[test]
fn tampered_foreign_or_own_invites_are_refused_and_change_nothing() {
    let asha = account("+919812345678", "Asha");
    let ravi = account("+919812340001", "Ravi");
    let link = invite(&asha);
    let before = ravi.state();

    // Flip one character of the encoded card.
    let mut bytes = link.clone().into_bytes();
    let i = bytes.len() - 20;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let (code, err) = ravi.fail(&["contacts", "add", "--invite", &tampered]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid contact card"), "{err}");

    let (code, err) = ravi.fail(&["contacts", "add", "--invite", "https://example.invalid/x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid contact card"), "{err}");

    let (code, err) = ravi.fail(&["contacts", "add", "+919812349999", "--invite", &link]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the invite is for +919812345678"), "{err}");

    let (code, err) = asha.fail(&["contacts", "add", "--invite", &link]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("your own"), "{err}");

    assert_eq!(ravi.state(), before);

    // An invite without a phone number needs one.
    let anon = asha.json(&["invite", "--no-phone"])["link"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, err) = ravi.fail(&["contacts", "add", "--invite", &anon]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("has no phone number"), "{err}");
    let added = ravi.json(&["contacts", "add", "+919812345678", "--invite", &anon]);
    assert_eq!(added["verified_keys"], true);
}
