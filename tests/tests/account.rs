//! The foundation end to end: account, profile, contacts, blocks, groups, privacy and export,
//! through the real binary in a temporary home.

use base64::Engine as _;
use instaconnect_e2e::{png, Home};
use serde_json::Value;

const VCF: &str = "BEGIN:VCARD\r
VERSION:3.0\r
FN:Ravi Kumar\r
N:Kumar;Ravi;;;\r
TEL;TYPE=CELL:+91 98123 40001\r
TEL;TYPE=HOME:+91 80 2222 3333\r
END:VCARD\r
BEGIN:VCARD\r
VERSION:4.0\r
FN:Meera\r
  Iyer\r
TEL;VALUE=uri;TYPE=cell:tel:+91-98123-40002\r
END:VCARD\r
BEGIN:VCARD\r
VERSION:3.0\r
FN:No Number\r
EMAIL:nobody@example.invalid\r
END:VCARD\r
";

fn created() -> Home {
    let h = Home::new();
    h.ok(&[
        "account",
        "create",
        "--phone",
        "+919812345678",
        "--name",
        "Asha",
    ]);
    h
}

#[test]
fn the_whole_foundation_flow_works_and_export_holds_it_all() {
    let h = created();

    let acct = h.json(&["account", "show"]);
    assert_eq!(acct["phone"], "+919812345678");
    assert_eq!(acct["name"], "Asha");
    let peer_id = acct["peer_id"].as_str().unwrap().to_string();
    assert!(peer_id.starts_with("12D3KooW"), "{peer_id}");
    assert_eq!(
        acct["region"], "IN",
        "region comes from the account's number"
    );

    // Profile with a real PNG.
    let pic = png(300, 200);
    std::fs::write(h.file("me.png"), &pic).unwrap();
    h.ok(&[
        "profile",
        "set",
        "--status",
        "At the library",
        "--picture",
        h.file("me.png").to_str().unwrap(),
    ]);
    let prof = h.json(&["profile", "show"]);
    assert_eq!(prof["status"], "At the library");
    assert_eq!(prof["picture"]["mime"], "image/png");
    assert_eq!(prof["picture"]["width"], 300);
    assert_eq!(prof["picture"]["height"], 200);

    // vCard with 3 cards: one with two numbers, one with a folded name, one malformed.
    std::fs::write(h.file("contacts.vcf"), VCF).unwrap();
    let summary = h.json(&[
        "contacts",
        "import",
        h.file("contacts.vcf").to_str().unwrap(),
    ]);
    assert_eq!(summary["added"].as_array().unwrap().len(), 3, "{summary}");
    let skipped = summary["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{summary}");
    assert_eq!(
        skipped[0]["line"], 14,
        "the malformed card's BEGIN line: {summary}"
    );
    assert!(
        skipped[0]["reason"].as_str().unwrap().contains("no TEL"),
        "{summary}"
    );

    let list = h.contacts();
    assert_eq!(
        list,
        vec![
            ("+918022223333".to_string(), Some("Ravi Kumar".to_string())),
            ("+919812340001".to_string(), Some("Ravi Kumar".to_string())),
            ("+919812340002".to_string(), Some("Meera Iyer".to_string())),
        ]
    );

    // Importing the same file again changes nothing.
    let again = h.json(&[
        "contacts",
        "import",
        h.file("contacts.vcf").to_str().unwrap(),
    ]);
    assert_eq!(again["added"].as_array().unwrap().len(), 0);
    assert_eq!(again["unchanged"], 3);

    // A national number read in the account's region.
    h.ok(&["contacts", "add", "098123 40003", "--name", "Kiran"]);

    h.ok(&["block", "Kiran"]);
    let blocked = h.json(&["blocked"]);
    assert_eq!(blocked[0]["phone"], "+919812340003");

    let g = h.json(&[
        "groups",
        "create",
        "Book club",
        "--members",
        "Meera Iyer,+919812340001",
    ]);
    assert_eq!(g["name"], "Book club");
    let members: Vec<(&str, &str)> = g["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["phone"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    assert_eq!(
        members,
        vec![
            ("+919812345678", "admin"),
            ("+919812340002", "member"),
            ("+919812340001", "member"),
        ]
    );
    h.ok(&["groups", "rename", "Book club", "Readers"]);
    h.ok(&["privacy", "set", "status", "contacts"]);

    let out = h.file("export.json");
    h.ok(&["export", "--out", out.to_str().unwrap()]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the export is readable only by its owner");
    }
    let ex: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(ex["format"], "instaconnect-export");
    assert_eq!(ex["version"], 1);
    assert_eq!(ex["account"]["phone"], "+919812345678");
    assert_eq!(ex["account"]["peer_id"], peer_id.as_str());
    assert!(
        ex.get("keys").is_none(),
        "no secret keys without --include-keys"
    );
    assert_eq!(ex["profile"]["name"], "Asha");
    assert_eq!(ex["profile"]["status"], "At the library");
    let data = base64::engine::general_purpose::STANDARD
        .decode(ex["profile"]["picture"]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, pic, "the exported picture is the original file");
    let thumb = base64::engine::general_purpose::STANDARD
        .decode(ex["profile"]["picture"]["thumbnail_png"].as_str().unwrap())
        .unwrap();
    let t = image::load_from_memory(&thumb).unwrap();
    assert!(
        t.width() <= 96 && t.height() <= 96 && t.width() == 96,
        "{}x{}",
        t.width(),
        t.height()
    );
    assert_eq!(ex["contacts"].as_array().unwrap().len(), 4);
    let kiran = ex["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "Kiran")
        .unwrap();
    assert_eq!(kiran["blocked"], true);
    assert_eq!(ex["blocked"][0]["phone"], "+919812340003");
    assert_eq!(ex["groups"][0]["name"], "Readers");
    assert_eq!(ex["groups"][0]["members"].as_array().unwrap().len(), 3);
    assert_eq!(ex["settings"]["privacy"]["status"], "contacts");
    assert_eq!(ex["settings"]["privacy"]["phone"], "contacts");
    assert_eq!(ex["settings"]["privacy"]["location"], "nobody");

    let with_keys = h.json(&["export", "--include-keys"]);
    let seed = base64::engine::general_purpose::STANDARD
        .decode(with_keys["keys"]["identity_secret"].as_str().unwrap())
        .unwrap();
    assert_eq!(seed.len(), 32);
}

#[test]
fn bad_input_gives_a_clear_error_and_changes_nothing() {
    let h = created();
    h.ok(&["contacts", "add", "+919812340001", "--name", "Ravi"]);
    let before = h.state();

    let check = |args: &[&str], code: i32, needle: &str| {
        let (c, err) = h.fail(args);
        assert_eq!(c, code, "`{}`: {err}", args.join(" "));
        assert!(
            err.contains(needle),
            "`{}`: expected {needle:?} in {err:?}",
            args.join(" ")
        );
        assert_eq!(h.state(), before, "`{}` changed the store", args.join(" "));
    };

    check(
        &["contacts", "add", "12345"],
        2,
        r#"not a valid phone number: "12345" (expected E.164 such as +919812345678)"#,
    );
    check(
        &["contacts", "add", "+91 12"],
        2,
        "not a valid phone number",
    );
    check(
        &["contacts", "add", "call me"],
        2,
        "not a valid phone number",
    );

    std::fs::write(
        h.file("not-an-image.png"),
        b"hello, this is text pretending",
    )
    .unwrap();
    check(
        &[
            "profile",
            "set",
            "--picture",
            h.file("not-an-image.png").to_str().unwrap(),
        ],
        2,
        "not a supported image",
    );
    let mut big = png(64, 64);
    big.resize(6 * 1024 * 1024, 0);
    std::fs::write(h.file("big.png"), &big).unwrap();
    check(
        &[
            "profile",
            "set",
            "--picture",
            h.file("big.png").to_str().unwrap(),
        ],
        2,
        "too large",
    );
    check(
        &[
            "profile",
            "set",
            "--picture",
            h.file("missing.png").to_str().unwrap(),
        ],
        2,
        "cannot read picture",
    );

    std::fs::write(
        h.file("garbage.vcf"),
        [0x89, b'P', b'N', b'G', 0xff, 0xfe, 0x00],
    )
    .unwrap();
    check(
        &[
            "contacts",
            "import",
            h.file("garbage.vcf").to_str().unwrap(),
        ],
        2,
        "not UTF-8",
    );
    std::fs::write(h.file("notes.vcf"), "just some notes\nnothing here\n").unwrap();
    check(
        &[
            "contacts",
            "import",
            "--format",
            "vcard",
            h.file("notes.vcf").to_str().unwrap(),
        ],
        2,
        "no vCard found",
    );
    check(
        &[
            "contacts",
            "import",
            h.file("nowhere.vcf").to_str().unwrap(),
        ],
        2,
        "cannot read contacts file",
    );

    check(
        &["privacy", "set", "shoe-size", "nobody"],
        2,
        "unknown privacy field \"shoe-size\"",
    );
    check(
        &["privacy", "set", "phone", "friends"],
        2,
        "unknown visibility \"friends\"",
    );

    check(
        &[
            "groups",
            "create",
            "Strangers",
            "--members",
            "+919812349999",
        ],
        2,
        "+919812349999 is not one of your contacts",
    );
    check(
        &["groups", "create", "Ghosts", "--members", "Ravi,Nobody"],
        2,
        "no contact matches \"Nobody\"",
    );

    check(
        &[
            "account",
            "create",
            "--phone",
            "+919800000000",
            "--name",
            "Other",
        ],
        1,
        "already exists",
    );
    check(
        &["--region", "XX", "contacts", "add", "98123 40005"],
        2,
        "unknown region",
    );
    check(&["block", "+919812345678"], 2, "your own number");
    // Usage errors from the parser itself exit 2 too.
    check(&["contacts", "frobnicate"], 2, "unrecognized subcommand");
}

#[test]
fn commands_without_an_account_explain_and_create_nothing() {
    let h = Home::new();
    let (code, err) = h.fail(&["contacts", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("no account"), "{err}");
    assert!(
        !h.data_dir().exists(),
        "a failed command created the data dir"
    );
    let (code, err) = h.fail(&["account", "create", "--phone", "12345", "--name", "A"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        !h.data_dir().exists(),
        "a rejected create left a data dir behind"
    );
}

#[test]
fn instaconnect_home_selects_the_data_dir() {
    let h = Home::new();
    let dir = h.file("via-env");
    let out = std::process::Command::new(instaconnect_e2e::bin())
        .args([
            "account",
            "create",
            "--phone",
            "+14155552671",
            "--name",
            "Sam",
        ])
        .env("INSTACONNECT_HOME", &dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("db").exists());
    let shown = std::process::Command::new(instaconnect_e2e::bin())
        .args(["account", "show", "--json"])
        .env("INSTACONNECT_HOME", &dir)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(v["phone"], "+14155552671");
    assert_eq!(v["region"], "US");
}

#[test]
fn csv_import_reports_each_skipped_line() {
    let h = created();
    std::fs::write(
        h.file("people.csv"),
        "name,phone\nRavi,+91 98123 40001\nBad,12345\n\"Iyer, Meera\",098123 40002\nRavi again,+919812340001\n",
    )
    .unwrap();
    let s = h.json(&["contacts", "import", h.file("people.csv").to_str().unwrap()]);
    assert_eq!(s["added"].as_array().unwrap().len(), 2, "{s}");
    assert_eq!(s["merged"], 1, "{s}");
    assert_eq!(s["skipped"][0]["line"], 3, "{s}");
    let list = h.contacts();
    assert_eq!(
        list,
        vec![
            ("+919812340001".to_string(), Some("Ravi".to_string())),
            ("+919812340002".to_string(), Some("Iyer, Meera".to_string())),
        ]
    );
}

#[test]
fn group_roles_are_enforced() {
    let h = created();
    h.ok(&["contacts", "add", "+919812340001", "--name", "Ravi"]);
    h.ok(&["contacts", "add", "+919812340002", "--name", "Meera"]);
    h.ok(&["groups", "create", "Trip", "--members", "Ravi"]);
    h.ok(&["groups", "add", "Trip", "Meera"]);
    let (code, err) = h.fail(&["groups", "add", "Trip", "Meera"]);
    assert_eq!(code, 2);
    assert!(err.contains("already a member"), "{err}");
    h.ok(&["groups", "remove", "Trip", "Ravi"]);
    let g = h.json(&["groups", "show", "Trip"]);
    assert_eq!(g["members"].as_array().unwrap().len(), 2);
    // Leaving hands admin to the remaining member and freezes the group for us.
    let left = h.json(&["groups", "leave", "Trip"]);
    assert_eq!(left["left"], true);
    assert_eq!(left["members"][0]["phone"], "+919812340002");
    assert_eq!(left["members"][0]["role"], "admin");
    let (code, err) = h.fail(&["groups", "rename", "Trip", "Trip 2"]);
    assert_eq!(code, 2);
    assert!(err.contains("you left the group"), "{err}");
}

#[test]
fn privacy_defaults_are_those_of_a_mainstream_messenger() {
    let h = created();
    let p = h.json(&["privacy", "show"]);
    assert_eq!(
        p,
        serde_json::json!({
            "phone": "contacts", "name": "everyone", "picture": "everyone", "status": "everyone",
            "online": "contacts", "receipts": "contacts", "location": "nobody"
        })
    );
    h.ok(&["privacy", "set", "receipts", "nobody"]);
    assert_eq!(h.json(&["privacy", "show"])["receipts"], "nobody");
}
