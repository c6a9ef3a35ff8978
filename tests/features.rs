//! Features and removal strategies against Python's answers and the real tiny tokenizers.
//!
//! The expected values were produced with Python 3.11.7 (`re`, `str.isalnum`, and lime's
//! splitter `re.compile(r"(\W+)|$")`) while writing these tests and are hard-coded, so the
//! tests need neither Python nor the network.

use std::path::Path;
use std::sync::OnceLock;

use glassbox::explain::features::{split_words, FeatureError, FeatureKind, FeatureSet, Removal};
use glassbox::explain::word_chars::{is_word_char, WORD_RANGES};
use glassbox::model::TextEncoder;
use proptest::prelude::*;

fn encoder(model: &str, max_len: usize) -> TextEncoder {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(model)
        .join("tokenizer.json");
    TextEncoder::from_file(&path, max_len).unwrap()
}

/// Loaded once: the BERT vocabulary takes a while to parse and the property test needs it
/// hundreds of times.
fn bert() -> &'static TextEncoder {
    static ENC: OnceLock<TextEncoder> = OnceLock::new();
    ENC.get_or_init(|| encoder("tiny-bert-cls", 512))
}

fn roberta() -> &'static TextEncoder {
    static ENC: OnceLock<TextEncoder> = OnceLock::new();
    ENC.get_or_init(|| encoder("tiny-roberta-cls", 512))
}

/// `(char, Python's re.match(r"\w", c) is not None)`.
const PYTHON_WORD_CHARS: &[(char, bool, &str)] = &[
    ('a', true, "ASCII letter"),
    ('Z', true, "ASCII letter"),
    ('7', true, "ASCII digit"),
    (
        '_',
        true,
        "underscore (Pc) is the one non-alphanumeric word char",
    ),
    ('-', false, "hyphen"),
    (' ', false, "space"),
    ('\u{a0}', false, "no-break space"),
    ('\u{3000}', false, "ideographic space"),
    ('é', true, "precomposed e acute"),
    ('\u{301}', false, "combining acute accent (Mn)"),
    ('\u{300}', false, "combining grave accent (Mn)"),
    (
        '\u{345}',
        false,
        "combining ypogegrammeni: Other_Alphabetic, not alnum in Python",
    ),
    ('中', true, "CJK ideograph"),
    ('\u{20000}', true, "CJK extension B (astral)"),
    ('\u{f900}', true, "CJK compatibility ideograph"),
    ('ぁ', true, "hiragana"),
    ('ー', true, "katakana prolonged sound mark (Lm)"),
    ('क', true, "Devanagari letter"),
    ('\u{93f}', false, "Devanagari vowel sign I (Mc)"),
    ('\u{94d}', false, "Devanagari virama (Mn)"),
    ('०', true, "Devanagari digit zero"),
    ('९', true, "Devanagari digit nine"),
    ('²', true, "superscript two (No)"),
    ('¹', true, "superscript one (No)"),
    ('⁰', true, "superscript zero (No)"),
    ('½', true, "vulgar fraction one half (No)"),
    ('①', true, "circled digit one (No)"),
    ('Ⅻ', true, "Roman numeral twelve (Nl)"),
    ('〇', true, "ideographic number zero (Nl)"),
    ('ᛮ', true, "runic arlaug symbol (Nl)"),
    ('０', true, "fullwidth digit zero"),
    (
        '\u{1d7ce}',
        true,
        "mathematical bold digit zero (astral Nd)",
    ),
    ('ª', true, "feminine ordinal indicator (Lo)"),
    ('ˆ', true, "modifier letter circumflex (Lm)"),
    ('😀', false, "emoji"),
    ('\u{1f3fb}', false, "emoji skin-tone modifier (Sk)"),
    ('\u{1f1fa}', false, "regional indicator"),
    ('\u{fe0f}', false, "variation selector 16"),
    ('\u{200d}', false, "zero width joiner (Cf)"),
    ('\u{200c}', false, "zero width non-joiner (Cf)"),
    ('\u{2028}', false, "line separator"),
    ('€', false, "euro sign (Sc)"),
    ('ا', true, "Arabic letter alef"),
    ('٠', true, "Arabic-Indic digit zero"),
    ('\u{64b}', false, "Arabic fathatan (Mn)"),
    ('ก', true, "Thai letter"),
    ('\u{e31}', false, "Thai vowel mark (Mn)"),
    ('\u{e48}', false, "Thai tone mark (Mn)"),
    ('Ꭰ', true, "Cherokee letter"),
    ('\u{e000}', false, "private use"),
    ('\u{10ffff}', false, "unassigned"),
];

#[test]
fn word_chars_match_python() {
    for &(c, python, what) in PYTHON_WORD_CHARS {
        assert_eq!(is_word_char(c), python, "U+{:04X} ({what})", c as u32);
    }
}

/// Why the table exists: Rust's notion differs from Python's on exactly such characters.
#[test]
fn rust_is_alphanumeric_would_be_wrong() {
    for c in ['\u{345}', '\u{93f}'] {
        assert!(
            c.is_alphanumeric() && !is_word_char(c),
            "U+{:04X}",
            c as u32
        );
    }
}

#[test]
fn word_table_is_sorted_disjoint_and_merged() {
    assert!(!WORD_RANGES.is_empty());
    for &(lo, hi) in WORD_RANGES {
        assert!(lo <= hi);
    }
    for pair in WORD_RANGES.windows(2) {
        assert!(pair[0].1 + 1 < pair[1].0, "{pair:?} overlap or touch");
    }
    // Every range boundary is answered correctly by the binary search.
    for &(lo, hi) in WORD_RANGES {
        for cp in [lo, hi] {
            if let Some(c) = char::from_u32(cp) {
                assert!(is_word_char(c), "U+{cp:04X}");
            }
        }
        for cp in [lo.wrapping_sub(1), hi + 1] {
            if let Some(c) = char::from_u32(cp) {
                assert!(!is_word_char(c), "U+{cp:04X}");
            }
        }
    }
}

/// `(text, [(word, byte start, byte end, utf16 start, utf16 end)])`, from Python lime's
/// splitter.
type Expected = (
    &'static str,
    &'static [(&'static str, usize, usize, usize, usize)],
);
const PYTHON_SPLITS: &[Expected] = &[
    (
        "Caf\u{e9} cr\u{e8}me, na\u{ef}ve r\u{e9}sum\u{e9}!",
        &[("Caf\u{e9}", 0, 5, 0, 4), ("cr\u{e8}me", 6, 12, 5, 10), ("na\u{ef}ve", 14, 20, 12, 17), ("r\u{e9}sum\u{e9}", 21, 29, 18, 24)],
    ),
    ("Cafe\u{301} s\u{301}", &[("Cafe", 0, 4, 0, 4), ("s", 7, 8, 6, 7)]),
    (
        "\u{5317}\u{4eac}\u{6b22}\u{8fce}\u{4f60} hello\u{4e16}\u{754c}",
        &[("\u{5317}\u{4eac}\u{6b22}\u{8fce}\u{4f60}", 0, 15, 0, 5), ("hello\u{4e16}\u{754c}", 16, 27, 6, 13)],
    ),
    (
        "\u{939}\u{93f}\u{928}\u{94d}\u{926}\u{940} \u{967}\u{968}\u{969} test",
        &[("\u{939}", 0, 3, 0, 1), ("\u{928}", 6, 9, 2, 3), ("\u{926}", 12, 15, 4, 5), ("\u{967}\u{968}\u{969}", 19, 28, 7, 10), ("test", 29, 33, 11, 15)],
    ),
    (
        "E = mc\u{b2} and \u{216b} o'clock",
        &[("E", 0, 1, 0, 1), ("mc\u{b2}", 4, 8, 4, 7), ("and", 9, 12, 8, 11), ("\u{216b}", 13, 16, 12, 13), ("o", 17, 18, 14, 15), ("clock", 19, 24, 16, 21)],
    ),
    (
        "family \u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467} emoji\u{1f600}x",
        &[("family", 0, 6, 0, 6), ("emoji", 26, 31, 16, 21), ("x", 35, 36, 23, 24)],
    ),
    (
        "\u{645}\u{631}\u{62d}\u{628}\u{627} \u{628}\u{627}\u{644}\u{639}\u{627}\u{644}\u{645} \u{661}\u{662}\u{663}",
        &[
            ("\u{645}\u{631}\u{62d}\u{628}\u{627}", 0, 10, 0, 5),
            ("\u{628}\u{627}\u{644}\u{639}\u{627}\u{644}\u{645}", 11, 25, 6, 13),
            ("\u{661}\u{662}\u{663}", 26, 32, 14, 17),
        ],
    ),
    ("snake_case __init__ a_b", &[("snake_case", 0, 10, 0, 10), ("__init__", 11, 19, 11, 19), ("a_b", 20, 23, 20, 23)]),
    ("x\u{200d}y", &[("x", 0, 1, 0, 1), ("y", 4, 5, 2, 3)]),
    ("\u{1d7ce}\u{1d7cf} \u{1d400}\u{1d401}", &[("\u{1d7ce}\u{1d7cf}", 0, 8, 0, 4), ("\u{1d400}\u{1d401}", 9, 17, 5, 9)]),
];

#[test]
fn words_split_like_python_lime() {
    for &(text, expected) in PYTHON_SPLITS {
        let got: Vec<(usize, usize)> = split_words(text);
        let want: Vec<(usize, usize)> = expected.iter().map(|w| (w.1, w.2)).collect();
        assert_eq!(got, want, "{text:?}");
    }
}

fn utf16_slice(text: &str, start: usize, end: usize) -> String {
    let units: Vec<u16> = text.encode_utf16().collect();
    String::from_utf16(&units[start..end]).unwrap()
}

#[test]
fn word_features_carry_python_offsets_and_round_trip() {
    for enc in [bert(), roberta()] {
        for &(text, expected) in PYTHON_SPLITS {
            let encoding = enc.encode(text, false).unwrap();
            let set = FeatureSet::words(text, &encoding, false);
            assert_eq!(set.len(), expected.len(), "{text:?}");
            for (f, &(word, start, end, u16s, u16e)) in set.features().iter().zip(expected) {
                assert_eq!(f.text, word);
                let s = f.spans[0];
                assert_eq!(
                    (s.start, s.end, s.utf16_start, s.utf16_end),
                    (start, end, u16s, u16e),
                    "{word:?}"
                );
                assert_eq!(&text[s.start..s.end], word);
                assert_eq!(utf16_slice(text, s.utf16_start, s.utf16_end), word);
                for &t in &f.tokens {
                    assert!(!encoding.special[t]);
                    let (ts, te) = encoding.offsets[t];
                    assert!(
                        ts < s.end && s.start < te,
                        "token {t} {:?} does not overlap {word:?}",
                        (ts, te)
                    );
                }
            }
        }
    }
}

#[test]
fn token_features_round_trip_on_unicode() {
    for enc in [bert(), roberta()] {
        for &(text, _) in PYTHON_SPLITS {
            let encoding = enc.encode(text, false).unwrap();
            let set = FeatureSet::tokens(text, &encoding);
            let non_special = encoding.special.iter().filter(|s| !**s).count();
            assert_eq!(set.len(), non_special);
            assert_eq!(set.kind(), FeatureKind::Tokens);
            for f in set.features() {
                assert_eq!(f.tokens.len(), 1);
                let s = f.spans[0];
                assert_eq!(&text[s.start..s.end], f.text);
                assert_eq!(utf16_slice(text, s.utf16_start, s.utf16_end), f.text);
            }
        }
    }
}

#[test]
fn bow_and_positional_features() {
    let enc = bert();
    let text = "the cat saw The cat";
    let encoding = enc.encode(text, false).unwrap();

    let bow = FeatureSet::words(text, &encoding, true);
    let names: Vec<&str> = bow.features().iter().map(|f| f.text.as_str()).collect();
    assert_eq!(
        names,
        ["the", "cat", "saw", "The"],
        "case-sensitive, first occurrence order"
    );
    let cat = &bow.features()[1];
    assert_eq!(
        cat.spans
            .iter()
            .map(|s| (s.start, s.end))
            .collect::<Vec<_>>(),
        [(4, 7), (16, 19)]
    );
    assert_eq!(cat.tokens.len(), 2);

    let pos = FeatureSet::words(text, &encoding, false);
    assert_eq!(pos.len(), 5);
    assert!(pos
        .features()
        .iter()
        .all(|f| f.spans.len() == 1 && f.tokens.len() == 1));

    // Removing a bow feature removes every occurrence; a positional one only its own.
    assert_eq!(
        bow.text_without(&[true, false, true, true]).unwrap(),
        "the  saw The "
    );
    assert_eq!(
        pos.text_without(&[true, true, true, true, false]).unwrap(),
        "the cat saw The "
    );
}

/// Perturbed texts hard-coded from lime's `IndexedString` (bow) splitting and
/// `inverse_removing` logic, re-run in Python 3.11.7.
#[test]
fn remove_equals_retokenizing_the_lime_text() {
    let cases: &[(&str, &[bool], &str)] = &[
        (
            "The movie was not good, not at all.",
            &[true, true, true, false, true, true, true],
            "The movie was  good,  at all.",
        ),
        (
            "Café crème, naïve résumé!",
            &[false, true, true, false],
            " crème, naïve !",
        ),
        ("Cafe\u{301} s\u{301}", &[false, true], "\u{301} s\u{301}"),
        ("don't stop", &[true, false, false], "don' "),
        ("北京欢迎你 hello世界", &[false, true], " hello世界"),
    ];
    for enc in [bert(), roberta()] {
        for &(text, keep, lime_text) in cases {
            let encoding = enc.encode(text, false).unwrap();
            let set = FeatureSet::words(text, &encoding, true);
            let p = set
                .perturber(enc, Removal::Remove, false)
                .unwrap()
                .perturb(keep)
                .unwrap();
            assert_eq!(p.text.as_deref(), Some(lime_text));
            let expected = enc.encode(lime_text, false).unwrap();
            assert_eq!(p.row.ids, expected.ids, "{text:?} -> {lime_text:?}");
            assert_eq!(p.row.type_ids, expected.type_ids);
        }
    }
}

#[test]
fn keeping_everything_gives_the_original_row() {
    let enc = bert();
    let text = "A fine, fine day.";
    let encoding = enc.encode(text, false).unwrap();
    let set = FeatureSet::words(text, &encoding, true);
    for removal in [Removal::Remove, Removal::MaskToken, Removal::UnkToken] {
        let p = set
            .perturber(enc, removal, false)
            .unwrap()
            .perturb(&vec![true; set.len()])
            .unwrap();
        assert_eq!(p.row.ids, encoding.ids);
    }
}

/// Removing every word leaves the separators and the special tokens.
#[test]
fn removing_everything_keeps_separators() {
    let enc = bert();
    let text = "Hi, there!";
    let encoding = enc.encode(text, false).unwrap();
    let set = FeatureSet::words(text, &encoding, true);
    let p = set
        .perturber(enc, Removal::Remove, false)
        .unwrap()
        .perturb(&[false, false])
        .unwrap();
    assert_eq!(p.text.as_deref(), Some(", !"));
    assert_eq!(p.row.ids, enc.encode(", !", false).unwrap().ids);
}

/// The naive WordPiece fast path (drop the removed word's token ids) is NOT the same as
/// re-tokenizing on these texts, which is why `remove` always re-tokenizes.
#[test]
fn dropping_token_ids_differs_from_retokenizing() {
    let enc = bert();
    // (text, index of the word feature to remove)
    let cases: &[(&str, usize)] = &[
        ("a€b", 0),
        ("€中€", 0),
        ("[MASK] here", 0),
        ("cafe\u{301}s", 1),
        ("x\u{200d}y", 0),
    ];
    for &(text, word) in cases {
        let encoding = enc.encode(text, false).unwrap();
        let set = FeatureSet::words(text, &encoding, false);
        let mut keep = vec![true; set.len()];
        keep[word] = false;
        let removed = &set.features()[word].tokens;
        let naive: Vec<u32> = encoding
            .ids
            .iter()
            .enumerate()
            .filter(|(i, _)| !removed.contains(i))
            .map(|(_, &id)| id)
            .collect();
        let exact = set
            .perturber(enc, Removal::Remove, false)
            .unwrap()
            .perturb(&keep)
            .unwrap();
        assert_ne!(
            naive, exact.row.ids,
            "{text:?}: tokens {:?}",
            encoding.tokens
        );
    }
}

#[test]
fn mask_and_unk_keep_length_and_positions() {
    for enc in [bert(), roberta()] {
        let text = "The movie was not good, not at all.";
        let encoding = enc.encode(text, false).unwrap();
        let set = FeatureSet::words(text, &encoding, true);
        let not = set.features().iter().position(|f| f.text == "not").unwrap();
        let mut keep = vec![true; set.len()];
        keep[not] = false;
        for (removal, id) in [
            (Removal::MaskToken, enc.mask_id().unwrap()),
            (Removal::UnkToken, enc.unk_id().unwrap()),
        ] {
            let p = set
                .perturber(enc, removal, false)
                .unwrap()
                .perturb(&keep)
                .unwrap();
            assert_eq!(p.row.len(), encoding.len());
            assert_eq!(p.row.type_ids, encoding.type_ids);
            assert!(p.text.is_none());
            let masked: Vec<usize> = (0..encoding.len())
                .filter(|&i| p.row.ids[i] != encoding.ids[i])
                .collect();
            assert_eq!(masked, set.features()[not].tokens);
            assert!(masked.len() >= 2);
            assert!(masked.iter().all(|&i| p.row.ids[i] == id));
        }
    }
}

#[test]
fn token_features_remove_drops_ids_and_keeps_specials() {
    for enc in [bert(), roberta()] {
        let text = "unbelievably good";
        let encoding = enc.encode(text, false).unwrap();
        let set = FeatureSet::tokens(text, &encoding);
        let mut keep = vec![true; set.len()];
        keep[0] = false;
        let p = set
            .perturber(enc, Removal::Remove, false)
            .unwrap()
            .perturb(&keep)
            .unwrap();
        let mut want = encoding.ids.clone();
        want.remove(set.features()[0].tokens[0]);
        assert_eq!(p.row.ids, want);
        assert_eq!(p.row.ids.first(), encoding.ids.first());
        assert_eq!(p.row.ids.last(), encoding.ids.last());
        assert!(p.text.is_none());

        let m = set
            .perturber(enc, Removal::MaskToken, false)
            .unwrap()
            .perturb(&vec![false; set.len()])
            .unwrap();
        assert_eq!(m.row.len(), encoding.len());
        assert_eq!(
            m.row
                .ids
                .iter()
                .filter(|&&id| id == enc.mask_id().unwrap())
                .count(),
            set.len()
        );
    }
}

#[test]
fn roberta_offsets_with_leading_space_belong_to_one_word() {
    let enc = roberta();
    let text = "hello world hello";
    let encoding = enc.encode(text, false).unwrap();
    let set = FeatureSet::words(text, &encoding, true);
    assert_eq!(set.len(), 2);
    let mut owners = vec![0; encoding.len()];
    for f in set.features() {
        assert!(
            !f.tokens.is_empty(),
            "{:?} has no tokens: {:?}",
            f.text,
            encoding.tokens
        );
        for &t in &f.tokens {
            owners[t] += 1;
        }
    }
    for (t, n) in owners.iter().enumerate() {
        assert_eq!(
            *n,
            usize::from(!encoding.special[t]),
            "token {t} {:?}",
            encoding.tokens[t]
        );
    }
}

/// With `trim_offsets = false` a byte-level BPE token such as `Ġworld` reports the space
/// before the word in its offsets; it must still belong to that word only.
#[test]
fn untrimmed_bpe_offsets_include_the_space_and_still_match_one_word() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny/tiny-roberta-cls/tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
    json["post_processor"]["trim_offsets"] = false.into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    let enc = TextEncoder::from_file(&path, 512).unwrap();

    let text = "hello world hello";
    let encoding = enc.encode(text, false).unwrap();
    let spaced = (0..encoding.len())
        .find(|&t| encoding.tokens[t].starts_with('\u{120}'))
        .unwrap();
    assert_eq!(
        &text[encoding.offsets[spaced].0..][..1],
        " ",
        "offsets are not untrimmed: {:?}",
        encoding.offsets
    );

    let set = FeatureSet::words(text, &encoding, false);
    assert_eq!(set.len(), 3);
    let mut owners = vec![0; encoding.len()];
    for f in set.features() {
        for &t in &f.tokens {
            owners[t] += 1;
        }
    }
    for (t, n) in owners.iter().enumerate() {
        assert_eq!(
            *n,
            usize::from(!encoding.special[t]),
            "token {t} {:?}",
            encoding.tokens[t]
        );
    }
    // Masking the middle word masks exactly its tokens, the one with the space included.
    let p = set
        .perturber(&enc, Removal::MaskToken, false)
        .unwrap()
        .perturb(&[true, false, true])
        .unwrap();
    let masked: Vec<usize> = (0..encoding.len())
        .filter(|&i| p.row.ids[i] != encoding.ids[i])
        .collect();
    assert_eq!(masked, set.features()[1].tokens);
    assert!(masked.contains(&spaced));
}

#[test]
fn truncated_input_words_beyond_the_window_have_no_tokens() {
    let enc = encoder("tiny-bert-cls", 8);
    let text = "one two three four five six seven eight nine ten";
    let encoding = enc.encode(text, true).unwrap();
    assert!(encoding.truncated);
    let set = FeatureSet::words(text, &encoding, true);
    assert_eq!(set.len(), 10);
    assert!(set.features()[..6].iter().all(|f| !f.tokens.is_empty()));
    assert!(set.features()[6..].iter().all(|f| f.tokens.is_empty()));
    // Removing a word re-tokenizes the edited text with the same truncation.
    let mut keep = vec![true; 10];
    keep[0] = false;
    let p = set
        .perturber(&enc, Removal::Remove, true)
        .unwrap()
        .perturb(&keep)
        .unwrap();
    assert_eq!(
        p.row.ids,
        enc.encode(p.text.as_deref().unwrap(), true).unwrap().ids
    );
    assert_eq!(p.row.len(), 8);
}

#[test]
fn missing_special_tokens_are_errors() {
    // A minimal WordPiece tokenizer with neither a mask nor an unknown token.
    let json = r#"{
      "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
      "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
      "decoder": null,
      "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1}, "unk_token": "a"}
    }"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, json).unwrap();
    let enc = TextEncoder::from_file(&path, 16).unwrap();
    let encoding = enc.encode("a b", false).unwrap();
    let set = FeatureSet::words("a b", &encoding, true);
    assert!(matches!(
        set.perturber(&enc, Removal::MaskToken, false),
        Err(FeatureError::NoMaskToken)
    ));
    assert!(matches!(
        set.perturber(&enc, Removal::UnkToken, false),
        Err(FeatureError::NoUnkToken)
    ));
    let p = set.perturber(&enc, Removal::Remove, false).unwrap();
    assert!(matches!(
        p.perturb(&[true]),
        Err(FeatureError::MaskLength {
            expected: 2,
            got: 1
        })
    ));
}

#[test]
fn serde_names() {
    assert_eq!(
        serde_json::to_string(&Removal::Remove).unwrap(),
        "\"remove\""
    );
    assert_eq!(
        serde_json::to_string(&Removal::MaskToken).unwrap(),
        "\"mask_token\""
    );
    assert_eq!(
        serde_json::from_str::<Removal>("\"unk_token\"").unwrap(),
        Removal::UnkToken
    );
    assert_eq!(
        serde_json::from_str::<FeatureKind>("\"tokens\"").unwrap(),
        FeatureKind::Tokens
    );
    assert_eq!(Removal::default(), Removal::Remove);
    let enc = bert();
    let encoding = enc.encode("héllo", false).unwrap();
    let set = FeatureSet::words("héllo", &encoding, true);
    let v = serde_json::to_value(&set.features()[0]).unwrap();
    assert_eq!(v["text"], "héllo");
    assert_eq!(
        v["spans"][0],
        serde_json::json!({"start": 0, "end": 6, "utf16_start": 0, "utf16_end": 5})
    );
}

/// Characters that stress the splitter and the tokenizers, mixed with arbitrary ones.
fn unicode_text() -> impl Strategy<Value = String> {
    let tricky = prop::sample::select(vec![
        'a',
        'Z',
        '_',
        ' ',
        ',',
        '\'',
        '\u{301}',
        '中',
        '०',
        '²',
        'Ⅻ',
        '😀',
        '\u{200d}',
        'ا',
        '\u{64b}',
        '€',
        '\u{93f}',
        '\u{1d7ce}',
        '\n',
        '\u{a0}',
        '[',
        ']',
        '#',
    ]);
    let c = prop_oneof![3 => tricky, 1 => any::<char>()];
    prop::collection::vec(c, 0..40).prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn spans_cover_exactly_the_word_chars(text in unicode_text(), seed in any::<u64>()) {
        let words = split_words(&text);
        let mut in_word = vec![false; text.len()];
        let mut prev_end = None;
        for &(s, e) in &words {
            prop_assert!(text.is_char_boundary(s) && text.is_char_boundary(e) && s < e);
            if let Some(p) = prev_end {
                prop_assert!(s > p, "words touch or overlap");
            }
            prev_end = Some(e);
            in_word[s..e].fill(true);
        }
        for (i, c) in text.char_indices() {
            prop_assert_eq!(in_word[i], is_word_char(c), "char {:?} at {}", c, i);
        }

        for enc in [bert(), roberta()] {
            let encoding = enc.encode(&text, true).unwrap();
            for bow in [true, false] {
                let set = FeatureSet::words(&text, &encoding, bow);
                for f in set.features() {
                    for s in &f.spans {
                        prop_assert_eq!(&text[s.start..s.end], f.text.as_str());
                        prop_assert_eq!(utf16_slice(&text, s.utf16_start, s.utf16_end), f.text.clone());
                    }
                }
                // A pseudo-random keep mask from the seed.
                let keep: Vec<bool> = (0..set.len()).map(|i| (seed >> (i % 64)) & 1 == 1).collect();
                for removal in [Removal::Remove, Removal::MaskToken, Removal::UnkToken] {
                    let p = set.perturber(enc, removal, true).unwrap().perturb(&keep).unwrap();
                    if removal != Removal::Remove {
                        prop_assert_eq!(p.row.len(), encoding.len());
                    }
                }
            }
            let tokens = FeatureSet::tokens(&text, &encoding);
            for f in tokens.features() {
                let s = f.spans[0];
                prop_assert_eq!(&text[s.start..s.end], f.text.as_str());
                prop_assert_eq!(utf16_slice(&text, s.utf16_start, s.utf16_end), f.text.clone());
            }
        }
    }
}

/// Short encoders: the truncation path on arbitrary text.
fn short(model: &str) -> &'static TextEncoder {
    static BERT: OnceLock<TextEncoder> = OnceLock::new();
    static ROBERTA: OnceLock<TextEncoder> = OnceLock::new();
    let cell = if model == "bert" { &BERT } else { &ROBERTA };
    cell.get_or_init(|| {
        let full = if model == "bert" { bert() } else { roberta() };
        full.clone().with_max_len(9)
    })
}

/// Arbitrary Unicode: the tricky set mixed with any scalar value, or any string at all.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![3 => unicode_text(), 1 => any::<String>()]
}

/// The tokenizer's offsets as the service uses them, and the features built on them, on
/// arbitrary Unicode, full length and truncated: no panics; every token offset and feature
/// span on char boundaries within the text; tokens in text order; features in order with
/// their spans ascending; each feature's tokens really overlapping one of its spans; removal
/// deleting exactly the removed features' spans.
#[test]
fn offsets_and_features_are_consistent_on_arbitrary_unicode() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(150));
    let encoders: [(&str, &TextEncoder); 4] = [
        ("bert", bert()),
        ("roberta", roberta()),
        ("bert/9", short("bert")),
        ("roberta/9", short("roberta")),
    ];
    runner
        .run(&(any_text(), any::<u64>()), |(text, seed)| {
            for (name, enc) in encoders {
                let encoding = match enc.encode(&text, true) {
                    Ok(e) => e,
                    Err(e) => return Err(TestCaseError::fail(format!("{name}: {e}"))),
                };
                prop_assert!(
                    encoding.len() <= enc.max_len(),
                    "{}: cut to its maximum",
                    name
                );
                let n = encoding.len();
                prop_assert!(
                    encoding.ids.len() == n
                        && encoding.type_ids.len() == n
                        && encoding.offsets.len() == n
                        && encoding.special.len() == n
                );
                let mut last_start = 0;
                for (t, &(s, e)) in encoding.offsets.iter().enumerate() {
                    prop_assert!(
                        s <= e && e <= text.len(),
                        "{}: token {} at {}..{}",
                        name,
                        t,
                        s,
                        e
                    );
                    prop_assert!(
                        text.is_char_boundary(s) && text.is_char_boundary(e),
                        "{}: token {} offsets {}..{} inside a character of {:?}",
                        name,
                        t,
                        s,
                        e,
                        text
                    );
                    if !encoding.special[t] {
                        prop_assert!(s >= last_start, "{}: tokens out of text order", name);
                        last_start = s;
                    }
                }

                for bow in [true, false] {
                    let set = FeatureSet::words(&text, &encoding, bow);
                    let mut first_starts = Vec::new();
                    for f in set.features() {
                        prop_assert!(!f.spans.is_empty());
                        first_starts.push(f.spans[0].start);
                        for pair in f.spans.windows(2) {
                            prop_assert!(pair[0].end <= pair[1].start, "spans ascending");
                        }
                        for s in &f.spans {
                            prop_assert!(s.start < s.end && s.end <= text.len());
                            prop_assert!(
                                text.is_char_boundary(s.start) && text.is_char_boundary(s.end)
                            );
                            prop_assert_eq!(&text[s.start..s.end], f.text.as_str());
                        }
                        for pair in f.tokens.windows(2) {
                            prop_assert!(pair[0] < pair[1], "tokens ascending and distinct");
                        }
                        for &t in &f.tokens {
                            prop_assert!(t < n && !encoding.special[t]);
                            let (ts, te) = encoding.offsets[t];
                            prop_assert!(
                                f.spans.iter().any(|s| ts < s.end && s.start < te),
                                "{}: token {} ({}..{}) does not overlap {:?}",
                                name,
                                t,
                                ts,
                                te,
                                f.text
                            );
                        }
                    }
                    prop_assert!(
                        first_starts.windows(2).all(|w| w[0] < w[1]),
                        "features in order of first occurrence"
                    );

                    let keep: Vec<bool> = (0..set.len())
                        .map(|i| (seed >> (i % 64)) & 1 == 1)
                        .collect();
                    let without = set.text_without(&keep).unwrap();
                    let removed: usize = set
                        .features()
                        .iter()
                        .zip(&keep)
                        .filter(|(_, &k)| !k)
                        .flat_map(|(f, _)| f.spans.iter().map(|s| s.end - s.start))
                        .sum();
                    prop_assert_eq!(without.len(), text.len() - removed, "exactly the spans go");
                    let p = set
                        .perturber(enc, Removal::Remove, true)
                        .unwrap()
                        .perturb(&keep)
                        .unwrap();
                    prop_assert!(
                        p.row.len() <= enc.max_len(),
                        "{}: a perturbed row over the maximum",
                        name
                    );
                }

                let tokens = FeatureSet::tokens(&text, &encoding);
                prop_assert_eq!(
                    tokens.len(),
                    encoding.special.iter().filter(|s| !**s).count()
                );
                for f in tokens.features() {
                    let s = f.spans[0];
                    prop_assert!(s.start <= s.end && s.end <= text.len());
                    prop_assert_eq!(&text[s.start..s.end], f.text.as_str());
                }
            }
            Ok(())
        })
        .unwrap();
}
