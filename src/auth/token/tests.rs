//! The refusal table and the key families, with keys made in the test.

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

const SECRET: &[u8] = b"test secret, long enough for HS512 as well";
/// 2026-01-01T00:00:00Z, the tests' "now".
const NOW: u64 = 1_767_225_600;
const NOW_MS: u64 = NOW * 1000;

fn hs_verifier() -> Verifier {
    Verifier::new(&VerifierConfig {
        secret: Some(SECRET.to_vec()),
        leeway_secs: 30,
        ..VerifierConfig::default()
    })
    .unwrap()
}

fn hs(alg: Algorithm, claims: &Value) -> String {
    encode(&Header::new(alg), claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// A token with the given header and claims and a garbage signature.
fn unsigned(header: Value, claims: &Value) -> String {
    format!("{}.{}.c2ln", b64(&header), b64(claims))
}

/// A token with the given header, properly signed with the test secret.
fn signed(header: Value, claims: &Value) -> String {
    let message = format!("{}.{}", b64(&header), b64(claims));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(SECRET), Algorithm::HS256)
            .unwrap();
    format!("{message}.{signature}")
}

fn ok_claims() -> Value {
    json!({"sub": "42", "exp": NOW + 60, "wshub": {"subscribe": ["news.*", "user.{sub}"], "publish": ["chat"]}})
}

#[test]
fn a_good_token_yields_its_grant() {
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let grant = hs_verifier().verify(&hs(alg, &ok_claims()), NOW_MS).unwrap();
        assert_eq!(grant.sub(), "42");
        assert_eq!(grant.exp_ms, (NOW + 60) * 1000);
        assert!(grant.may_subscribe("news.sport") && grant.may_subscribe("user.42"));
        assert!(!grant.may_subscribe("user.43") && !grant.may_subscribe("chat"));
        assert!(grant.may_publish("chat") && !grant.may_publish("news.sport"));
        assert!(!grant.may_broadcast());
    }
}

#[test]
fn refusal_table() {
    let v = hs_verifier();
    let other_key = |claims: &Value| {
        encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(b"another secret")).unwrap()
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, String, Result<(), Refusal>)> = vec![
        ("good", hs(Algorithm::HS256, &ok_claims()), Ok(())),
        ("not a jwt", "hello".into(), Err(Refusal::Malformed)),
        ("two parts", "a.b".into(), Err(Refusal::Malformed)),
        ("bad base64 header", "!!.e30.sig".into(), Err(Refusal::Malformed)),
        ("header not json", format!("{}.e30.sig", URL_SAFE_NO_PAD.encode("nope")), Err(Refusal::Malformed)),
        ("alg none", unsigned(json!({"alg": "none"}), &ok_claims()), Err(Refusal::AlgNotAllowed)),
        ("alg None", unsigned(json!({"alg": "None"}), &ok_claims()), Err(Refusal::AlgNotAllowed)),
        ("alg unknown", unsigned(json!({"alg": "HS1024"}), &ok_claims()), Err(Refusal::AlgNotAllowed)),
        ("alg without key", unsigned(json!({"alg": "RS256"}), &ok_claims()), Err(Refusal::AlgNotAllowed)),
        ("alg not a string", unsigned(json!({"alg": 5}), &ok_claims()), Err(Refusal::Malformed)),
        ("bad signature", other_key(&ok_claims()), Err(Refusal::BadSignature)),
        ("garbage signature", unsigned(json!({"alg": "HS256"}), &ok_claims()), Err(Refusal::BadSignature)),
        ("expired", hs(Algorithm::HS256, &json!({"sub": "a", "exp": NOW - 31})), Err(Refusal::Expired)),
        ("expired at the leeway", hs(Algorithm::HS256, &json!({"sub": "a", "exp": NOW - 30})), Err(Refusal::Expired)),
        ("within the leeway", hs(Algorithm::HS256, &json!({"sub": "a", "exp": NOW - 29})), Ok(())),
        ("fractional exp", hs(Algorithm::HS256, &json!({"sub": "a", "exp": NOW as f64 + 0.5})), Ok(())),
        ("nbf in the future", hs(Algorithm::HS256, &json!({"exp": NOW + 600, "nbf": NOW + 31})), Err(Refusal::NotYetValid)),
        ("nbf within the leeway", hs(Algorithm::HS256, &json!({"exp": NOW + 600, "nbf": NOW + 30})), Ok(())),
        ("no exp", hs(Algorithm::HS256, &json!({"sub": "a"})), Err(Refusal::Malformed)),
        ("exp a string", hs(Algorithm::HS256, &json!({"sub": "a", "exp": "tomorrow"})), Err(Refusal::Malformed)),
        ("sub a number", hs(Algorithm::HS256, &json!({"sub": 7, "exp": NOW + 60})), Err(Refusal::Malformed)),
        ("no sub is anonymous", hs(Algorithm::HS256, &json!({"exp": NOW + 60})), Ok(())),
        ("wshub not an object", hs(Algorithm::HS256, &json!({"exp": NOW + 60, "wshub": []})), Err(Refusal::Malformed)),
        ("patterns not strings", hs(Algorithm::HS256, &json!({"exp": NOW + 60, "wshub": {"subscribe": [1]}})), Err(Refusal::Malformed)),
        ("too many patterns", hs(Algorithm::HS256, &json!({"exp": NOW + 60, "wshub": {"publish": vec!["t"; 65]}})), Err(Refusal::Malformed)),
        ("aud ignored when not configured", hs(Algorithm::HS256, &json!({"exp": NOW + 60, "aud": "x"})), Ok(())),
        ("signed header", signed(json!({"alg": "HS256", "typ": "JWT", "kid": "k1"}), &ok_claims()), Ok(())),
        // RFC 7515 section 4.1.11: a `crit` extension the recipient does not understand makes
        // the token invalid, and we understand none.
        ("crit extension", signed(json!({"alg": "HS256", "crit": ["exp"]}), &ok_claims()), Err(Refusal::Malformed)),
        ("crit empty", signed(json!({"alg": "HS256", "crit": []}), &ok_claims()), Err(Refusal::Malformed)),
        ("too long", "a".repeat(super::super::extract::MAX_TOKEN_LEN + 1), Err(Refusal::Malformed)),
    ];
    for (name, token, expected) in cases {
        assert_eq!(v.verify(&token, NOW_MS).map(|_| ()), expected, "{name}");
    }
}

#[test]
fn audience_and_issuer_when_configured() {
    let v = Verifier::new(&VerifierConfig {
        secret: Some(SECRET.to_vec()),
        audience: Some("wshub".into()),
        issuer: Some("backend".into()),
        leeway_secs: 30,
        ..VerifierConfig::default()
    })
    .unwrap();
    let t = |claims: Value| v.verify(&hs(Algorithm::HS256, &claims), NOW_MS).map(|_| ());
    let exp = NOW + 60;
    assert_eq!(t(json!({"exp": exp, "aud": "wshub", "iss": "backend"})), Ok(()));
    assert_eq!(t(json!({"exp": exp, "aud": ["other", "wshub"], "iss": "backend"})), Ok(()));
    assert_eq!(t(json!({"exp": exp, "aud": "other", "iss": "backend"})), Err(Refusal::WrongAudience));
    assert_eq!(t(json!({"exp": exp, "iss": "backend"})), Err(Refusal::WrongAudience));
    assert_eq!(t(json!({"exp": exp, "aud": "wshub", "iss": "evil"})), Err(Refusal::WrongIssuer));
    assert_eq!(t(json!({"exp": exp, "aud": "wshub"})), Err(Refusal::WrongIssuer));
}

#[test]
fn public_key_families_from_pem() {
    use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};
    for (rcgen_alg, alg) in [
        (&PKCS_ECDSA_P256_SHA256, Algorithm::ES256),
        (&PKCS_ECDSA_P384_SHA384, Algorithm::ES384),
        (&PKCS_ED25519, Algorithm::EdDSA),
    ] {
        let pair = KeyPair::generate_for(rcgen_alg).unwrap();
        let v = Verifier::new(&VerifierConfig {
            public_key_pem: Some(pair.public_key_pem().into_bytes()),
            ..VerifierConfig::default()
        })
        .unwrap();
        let signing = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap(),
            _ => EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        };
        let token = encode(&Header::new(alg), &ok_claims(), &signing).unwrap();
        assert_eq!(v.verify(&token, NOW_MS).map(|g| g.sub().to_owned()), Ok("42".to_owned()), "{alg:?}");
        // The key's family only: an HS256 token is refused before any crypto.
        assert_eq!(v.verify(&hs(Algorithm::HS256, &ok_claims()), NOW_MS), Err(Refusal::AlgNotAllowed));
        // Another key of the same kind: bad signature.
        let other = KeyPair::generate_for(rcgen_alg).unwrap();
        let other_signing = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(other.serialize_pem().as_bytes()).unwrap(),
            _ => EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap(),
        };
        let forged = encode(&Header::new(alg), &ok_claims(), &other_signing).unwrap();
        assert_eq!(v.verify(&forged, NOW_MS), Err(Refusal::BadSignature), "{alg:?}");
        // A private key given as the public key is a configuration error.
        let private = VerifierConfig {
            public_key_pem: Some(pair.serialize_pem().into_bytes()),
            ..VerifierConfig::default()
        };
        assert_eq!(Verifier::new(&private).err(), Some(VerifierError::UnsupportedPublicKey));
    }
}

#[test]
fn both_a_secret_and_a_key_let_alg_choose() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let v = Verifier::new(&VerifierConfig {
        secret: Some(SECRET.to_vec()),
        public_key_pem: Some(pair.public_key_pem().into_bytes()),
        ..VerifierConfig::default()
    })
    .unwrap();
    let ed = EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap();
    assert!(v.verify(&encode(&Header::new(Algorithm::EdDSA), &ok_claims(), &ed).unwrap(), NOW_MS).is_ok());
    assert!(v.verify(&hs(Algorithm::HS256, &ok_claims()), NOW_MS).is_ok());
    // An HS256 token whose "secret" is the public key (the classic confusion attack) fails.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &ok_claims(),
        &EncodingKey::from_secret(pair.public_key_pem().as_bytes()),
    )
    .unwrap();
    assert_eq!(v.verify(&confused, NOW_MS), Err(Refusal::BadSignature));
}

#[test]
fn configuration_errors_and_no_secret_in_debug() {
    assert_eq!(Verifier::new(&VerifierConfig::default()).err(), Some(VerifierError::NoKey));
    let empty = VerifierConfig { secret: Some(Vec::new()), ..VerifierConfig::default() };
    assert_eq!(Verifier::new(&empty).err(), Some(VerifierError::EmptySecret));
    let garbage = VerifierConfig { public_key_pem: Some(b"not a pem".to_vec()), ..VerifierConfig::default() };
    assert_eq!(Verifier::new(&garbage).err(), Some(VerifierError::UnsupportedPublicKey));
    let config = VerifierConfig { secret: Some(b"hunter2-hunter2".to_vec()), ..VerifierConfig::default() };
    let shown = format!("{config:?} {:?}", Verifier::new(&config).unwrap());
    assert!(!shown.contains("hunter2") && !shown.contains("104, 117"), "{shown}");
    assert!(shown.contains("HS256"), "{shown}");
}
