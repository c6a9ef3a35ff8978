//! Features (words or model tokens) and how a feature is removed from the input.
//!
//! Every perturbation method (LIME, Kernel SHAP, occlusion, flip search) asks the same two
//! questions: "what are the features of this text?" and "what does the model see when these
//! features are removed?". Both are answered here, once, so that all methods agree and match
//! `METHODS.md` ("Features: words, tokens, and how a feature is removed").
//!
//! * Words are split exactly as Python `lime` splits them: maximal runs of Python `re` word
//!   characters ([`split_words`], backed by the generated [`super::word_chars`] table).
//! * Every feature carries its spans in UTF-8 bytes (for Rust) *and* UTF-16 code units (for a
//!   browser highlighting the text), plus the indices of the model tokens that belong to it.
//! * [`Perturber`] turns a keep-mask over features into the [`Row`] the model evaluates.
//!
//! ## Why `remove` always re-tokenizes
//!
//! `METHODS.md` allows a WordPiece fast path (drop the removed word's token ids instead of
//! tokenizing the edited text) only when a test proves it gives the same ids. It does not in
//! general, and [`crate::model::TextEncoder`] does not tell us which normalizer and
//! pre-tokenizer it runs, so we cannot restrict the fast path to the texts where it is exact.
//! Counter-examples with the BERT tokenizer (each is a test in `tests/features.rs`):
//!
//! * `"a€b"` is one BERT pre-token (`a`, `##€`, `##b`) but two lime words; without `a` the
//!   text `€b` tokenizes as `€`, `##b`, not `##€`, `##b`.
//! * `"€中€"` is `€`, `中`, `€` (BERT isolates CJK); without `中` it is `€`, `##€`.
//! * In `"[MASK] here"` the tokenizer matches the literal special token, lime sees the word
//!   `MASK`; without it the text `[] here` has two punctuation tokens where dropping left none.
//! * BERT's normalizer deletes characters lime splits on, merging lime's words into one token:
//!   `"x\u{200d}y"` (ZWJ) is `x`, `##y`, and `"cafe\u{301}s"` is the single token `cafes`.
//!
//! A sound fast path would need the tokenizer's normalizer and pre-tokenizer (not exposed) and
//! then hold only for restricted text (e.g. ASCII without added-token look-alikes, no
//! truncation). Re-tokenizing costs about 0.1 ms per row for a 70-token text (measured), small
//! next to a forward pass, so correctness wins.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::word_chars::is_word_char;
use crate::model::tokenizer::TokenizeError;
use crate::model::{Encoding, Row, TextEncoder};

/// Splits `text` into words as Python `lime` does (`re.split(r"(\W+)|$")`): maximal runs of
/// word characters, returned as UTF-8 byte ranges `(start, end)` in order.
///
/// Everything between the runs (spaces, punctuation, emoji, combining marks that Python does
/// not count as alphanumeric) is a separator and never a feature.
pub fn split_words(text: &str) -> Vec<(usize, usize)> {
    let mut words = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (is_word_char(c), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                words.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        words.push((s, text.len()));
    }
    words
}

/// Where one occurrence of a feature sits in the original text.
///
/// Both units are given because the service is written in Rust (UTF-8 bytes) and its clients
/// are mostly browsers, whose strings index by UTF-16 code units; converting on the client
/// side is easy to get wrong for emoji and other astral characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, ToSchema)]
pub struct Span {
    /// UTF-8 byte offset of the first byte.
    pub start: usize,
    /// UTF-8 byte offset one past the last byte.
    pub end: usize,
    /// UTF-16 code-unit offset of the start (JavaScript `String` index).
    pub utf16_start: usize,
    /// UTF-16 code-unit offset one past the end.
    pub utf16_end: usize,
}

/// One feature of an explanation: a distinct word (`bow`), one word occurrence, or one token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Feature {
    /// The feature as it appears in the text (for a token, the original substring it covers,
    /// not the tokenizer's `##piece`, so that it reads naturally).
    pub text: String,
    /// Every occurrence, in text order.
    pub spans: Vec<Span>,
    /// Indices into the [`Encoding`] of the tokens that belong to this feature, ascending.
    /// Empty for a word beyond a truncated input's window. A token straddling two words
    /// belongs to both (BERT reads `cafe\u{301}s` as the one token `cafes`, lime as the words
    /// `cafe` and `s`), so removing either masks it.
    pub tokens: Vec<usize>,
}

/// What a feature is: a word (the default, as lime) or a model token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    #[default]
    Words,
    Tokens,
}

/// How a removed feature is hidden from the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Removal {
    /// Delete the words from the text (spaces and punctuation stay) and tokenize again, as
    /// Python lime does; for token features, drop the token ids.
    #[default]
    Remove,
    /// Replace each token of a removed feature with the mask token, keeping positions.
    MaskToken,
    /// Replace each token of a removed feature with the unknown token, keeping positions.
    UnkToken,
}

/// Why a perturbation could not be built.
///
/// `NoMaskToken`/`NoUnkToken` are the client's to fix (another `mask`), `MaskLength` is a bug
/// in the calling method, and `Tokenize` is either `TooLong` (only with `truncate = false`) or
/// a tokenizer failure.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error("keep mask has {got} entries but the text has {expected} features")]
    MaskLength { expected: usize, got: usize },
    #[error("mask = \"mask_token\" needs a mask token and this model's tokenizer has none; use \"remove\" or \"unk_token\"")]
    NoMaskToken,
    #[error("mask = \"unk_token\" needs an unknown token and this model's tokenizer has none; use \"remove\" or \"mask_token\"")]
    NoUnkToken,
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
}

/// The features of one text, with the text and its encoding they were computed from, so that
/// perturbations are always made against the same original.
#[derive(Clone, Debug)]
pub struct FeatureSet {
    kind: FeatureKind,
    bow: bool,
    text: String,
    encoding: Encoding,
    features: Vec<Feature>,
}

impl FeatureSet {
    /// Features of the requested kind; `bow` only matters for words.
    pub fn new(kind: FeatureKind, text: &str, encoding: &Encoding, bow: bool) -> Self {
        match kind {
            FeatureKind::Words => Self::words(text, encoding, bow),
            FeatureKind::Tokens => Self::tokens(text, encoding),
        }
    }

    /// Word features of `text`, whose tokenization is `encoding`.
    ///
    /// With `bow` one feature per distinct word (case-sensitive, in order of first
    /// occurrence), removing every occurrence at once, as lime's default; without, one per
    /// occurrence. A token belongs to a word when their byte ranges overlap at all, which also
    /// covers byte-level BPE tokens whose offsets include the leading space. Special tokens
    /// never belong to a word.
    pub fn words(text: &str, encoding: &Encoding, bow: bool) -> Self {
        let index = Utf16Index::new(text);
        let words = split_words(text);
        let word_tokens = tokens_per_word(&words, encoding, text.len());

        let mut features: Vec<Feature> = Vec::new();
        let mut by_text: std::collections::HashMap<&str, usize> = Default::default();
        for (&(start, end), tokens) in words.iter().zip(word_tokens) {
            let word = &text[start..end];
            let span = index.span(start, end);
            let slot = if bow {
                by_text.get(word).copied()
            } else {
                None
            };
            match slot {
                Some(f) => {
                    features[f].spans.push(span);
                    features[f].tokens.extend(tokens);
                }
                None => {
                    if bow {
                        by_text.insert(word, features.len());
                    }
                    features.push(Feature {
                        text: word.to_string(),
                        spans: vec![span],
                        tokens,
                    });
                }
            }
        }
        for f in &mut features {
            f.tokens.sort_unstable();
            f.tokens.dedup();
        }
        Self {
            kind: FeatureKind::Words,
            bow,
            text: text.to_string(),
            encoding: encoding.clone(),
            features,
        }
    }

    /// One feature per non-special token of `encoding` (the tokenization of `text`).
    ///
    /// `text` is needed for the UTF-16 spans and the readable feature text.
    pub fn tokens(text: &str, encoding: &Encoding) -> Self {
        let index = Utf16Index::new(text);
        let features = (0..encoding.len())
            .filter(|&i| !encoding.special[i])
            .map(|i| {
                let (start, end) = char_range(text, encoding.offsets[i]);
                Feature {
                    text: text[start..end].to_string(),
                    spans: vec![index.span(start, end)],
                    tokens: vec![i],
                }
            })
            .collect();
        Self {
            kind: FeatureKind::Tokens,
            bow: false,
            text: text.to_string(),
            encoding: encoding.clone(),
            features,
        }
    }

    pub fn kind(&self) -> FeatureKind {
        self.kind
    }
    /// Whether word features merge repeated words (always false for tokens).
    pub fn bow(&self) -> bool {
        self.bow
    }
    /// The original text.
    pub fn text(&self) -> &str {
        &self.text
    }
    /// The original encoding (row 0 of every perturbation method).
    pub fn encoding(&self) -> &Encoding {
        &self.encoding
    }
    pub fn features(&self) -> &[Feature] {
        &self.features
    }
    pub fn len(&self) -> usize {
        self.features.len()
    }
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// The original text with the byte spans of every feature not kept deleted.
    ///
    /// For words this is exactly the text lime would build (separators stay). For tokens it
    /// is only a readable approximation: the model is given the remaining token ids, which
    /// need not be the tokenization of this text.
    pub fn text_without(&self, keep: &[bool]) -> Result<String, FeatureError> {
        self.check_mask(keep)?;
        let mut cut: Vec<(usize, usize)> = self
            .features
            .iter()
            .zip(keep)
            .filter(|(_, &k)| !k)
            .flat_map(|(f, _)| f.spans.iter().map(|s| (s.start, s.end)))
            .collect();
        cut.sort_unstable();
        let mut out = String::with_capacity(self.text.len());
        let mut at = 0;
        for (start, end) in cut {
            // Token spans may overlap (two byte-level tokens of one emoji share a range).
            if start > at {
                out.push_str(&self.text[at..start]);
            }
            at = at.max(end);
        }
        out.push_str(&self.text[at..]);
        Ok(out)
    }

    /// A perturber for this feature set. Fails up front when the tokenizer lacks the token the
    /// strategy needs, so a request is rejected before any model work.
    ///
    /// `truncate` must be the request's setting used for [`Self::encoding`]: re-tokenized texts
    /// get the same treatment as the original.
    pub fn perturber<'a>(
        &'a self,
        encoder: &'a TextEncoder,
        removal: Removal,
        truncate: bool,
    ) -> Result<Perturber<'a>, FeatureError> {
        let replacement = match removal {
            Removal::Remove => None,
            Removal::MaskToken => Some(encoder.mask_id().ok_or(FeatureError::NoMaskToken)?),
            Removal::UnkToken => Some(encoder.unk_id().ok_or(FeatureError::NoUnkToken)?),
        };
        Ok(Perturber {
            features: self,
            encoder,
            removal,
            replacement,
            truncate,
        })
    }

    fn check_mask(&self, keep: &[bool]) -> Result<(), FeatureError> {
        if keep.len() != self.features.len() {
            return Err(FeatureError::MaskLength {
                expected: self.features.len(),
                got: keep.len(),
            });
        }
        Ok(())
    }

    /// Token indices of the features not kept, as a per-token flag.
    fn removed_tokens(&self, keep: &[bool]) -> Vec<bool> {
        let mut removed = vec![false; self.encoding.len()];
        for (f, _) in self.features.iter().zip(keep).filter(|(_, &k)| !k) {
            for &t in &f.tokens {
                removed[t] = true;
            }
        }
        removed
    }
}

/// One perturbed input, ready for the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Perturbed {
    /// What the model evaluates (no head mask, no attentions; callers set those).
    pub row: Row,
    /// The perturbed text, present only when `row` is exactly its tokenization (word features
    /// with `remove`), so that a client can re-run it and get the same answer.
    pub text: Option<String>,
}

/// Builds perturbed rows for one [`FeatureSet`] under one [`Removal`] strategy.
///
/// Borrowing keeps it free to create inside whichever thread or task runs the method.
#[derive(Clone, Copy)]
pub struct Perturber<'a> {
    features: &'a FeatureSet,
    encoder: &'a TextEncoder,
    removal: Removal,
    /// The mask or unknown id for the token-replacing strategies.
    replacement: Option<u32>,
    truncate: bool,
}

impl<'a> Perturber<'a> {
    pub fn features(&self) -> &'a FeatureSet {
        self.features
    }
    pub fn removal(&self) -> Removal {
        self.removal
    }

    /// The model input with exactly the features flagged `false` in `keep` removed
    /// (`keep[i]` is feature `i`; all `true` gives the original input).
    pub fn perturb(&self, keep: &[bool]) -> Result<Perturbed, FeatureError> {
        let set = self.features;
        set.check_mask(keep)?;
        let enc = &set.encoding;
        let original = || Row {
            type_ids: enc.type_ids.clone(),
            ..Row::new(enc.ids.clone())
        };

        if let Some(id) = self.replacement {
            let mut row = original();
            for (i, removed) in set.removed_tokens(keep).into_iter().enumerate() {
                if removed {
                    row.ids[i] = id;
                }
            }
            return Ok(Perturbed { row, text: None });
        }

        match set.kind {
            FeatureKind::Tokens => {
                let removed = set.removed_tokens(keep);
                let kept = |v: &[u32]| {
                    v.iter()
                        .zip(&removed)
                        .filter(|(_, &r)| !r)
                        .map(|(&x, _)| x)
                        .collect()
                };
                let row = Row {
                    type_ids: kept(&enc.type_ids),
                    ..Row::new(kept(&enc.ids))
                };
                Ok(Perturbed { row, text: None })
            }
            FeatureKind::Words => {
                if keep.iter().all(|&k| k) {
                    // Same text, same tokenizer, same truncation: the original encoding.
                    return Ok(Perturbed {
                        row: original(),
                        text: Some(set.text.clone()),
                    });
                }
                let text = set.text_without(keep)?;
                let new = self.encoder.encode(&text, self.truncate)?;
                let row = Row {
                    type_ids: new.type_ids,
                    ..Row::new(new.ids)
                };
                Ok(Perturbed {
                    row,
                    text: Some(text),
                })
            }
        }
    }
}

/// For each word, the non-special tokens whose byte range overlaps it (non-empty overlap).
fn tokens_per_word(
    words: &[(usize, usize)],
    encoding: &Encoding,
    text_len: usize,
) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); words.len()];
    for (t, &(ts, te)) in encoding.offsets.iter().enumerate() {
        let (ts, te) = (ts.min(text_len), te.min(text_len));
        if encoding.special[t] || ts >= te {
            continue;
        }
        // Words are sorted and disjoint: the first that can overlap is the first ending after
        // the token starts.
        let first = words.partition_point(|&(_, we)| we <= ts);
        for (w, _) in words
            .iter()
            .enumerate()
            .skip(first)
            .take_while(|(_, &(ws, _))| ws < te)
        {
            out[w].push(t);
        }
    }
    out
}

/// Widens a byte range to char boundaries (and clamps it to the text), so that slicing never
/// panics even if a tokenizer reports an offset inside a multi-byte character.
fn char_range(text: &str, (start, end): (usize, usize)) -> (usize, usize) {
    let mut start = start.min(text.len());
    let mut end = end.min(text.len()).max(start);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    while !text.is_char_boundary(end) {
        end += 1;
    }
    (start, end)
}

/// UTF-16 offset of every char boundary of a text, built once per text so that each span
/// conversion is a lookup rather than a rescan.
struct Utf16Index(Vec<usize>);

impl Utf16Index {
    fn new(text: &str) -> Self {
        let mut at = vec![0; text.len() + 1];
        let mut units = 0;
        for (i, c) in text.char_indices() {
            at[i] = units;
            units += c.len_utf16();
        }
        at[text.len()] = units;
        Self(at)
    }

    /// `start` and `end` must be char boundaries.
    fn span(&self, start: usize, end: usize) -> Span {
        Span {
            start,
            end,
            utf16_start: self.0[start],
            utf16_end: self.0[end],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An encoding with the given offsets, as a tokenizer would report them.
    fn enc(offsets: Vec<(usize, usize)>, special: Vec<bool>) -> Encoding {
        let n = offsets.len();
        Encoding {
            ids: (0..n as u32).collect(),
            type_ids: vec![0; n],
            tokens: vec![String::new(); n],
            offsets,
            special,
            truncated: false,
        }
    }

    #[test]
    fn splits_like_python_lime() {
        let text = "Hello, wörld! foo_bar 2²x Ⅻ\u{301}ab";
        let words: Vec<&str> = split_words(text)
            .into_iter()
            .map(|(s, e)| &text[s..e])
            .collect();
        assert_eq!(words, ["Hello", "wörld", "foo_bar", "2²x", "Ⅻ", "ab"]);
        assert!(split_words("").is_empty());
        assert!(split_words(" ,;😀 ").is_empty());
    }

    #[test]
    fn bow_merges_occurrences_and_positional_does_not() {
        let text = "a b a";
        // [CLS] a b a [SEP]
        let e = enc(
            vec![(0, 0), (0, 1), (2, 3), (4, 5), (0, 0)],
            vec![true, false, false, false, true],
        );
        let bow = FeatureSet::words(text, &e, true);
        assert_eq!(bow.len(), 2);
        assert_eq!(bow.features()[0].tokens, vec![1, 3]);
        assert_eq!(bow.features()[0].spans.len(), 2);
        let pos = FeatureSet::words(text, &e, false);
        assert_eq!(pos.len(), 3);
        assert_eq!(pos.features()[2].tokens, vec![3]);
        assert_eq!(bow.text_without(&[false, true]).unwrap(), " b ");
        assert_eq!(pos.text_without(&[true, true, false]).unwrap(), "a b ");
    }

    #[test]
    fn token_with_leading_space_belongs_only_to_its_word() {
        let text = "hi there";
        // byte-level BPE without trimmed offsets: "Ġthere" covers the space.
        let e = enc(
            vec![(0, 0), (0, 2), (2, 8), (0, 0)],
            vec![true, false, false, true],
        );
        let set = FeatureSet::words(text, &e, true);
        assert_eq!(set.features()[0].tokens, vec![1]);
        assert_eq!(set.features()[1].tokens, vec![2]);
    }

    #[test]
    fn mask_length_is_checked() {
        let e = enc(vec![(0, 1)], vec![false]);
        let set = FeatureSet::words("a", &e, true);
        assert!(matches!(
            set.text_without(&[]),
            Err(FeatureError::MaskLength {
                expected: 1,
                got: 0
            })
        ));
    }

    #[test]
    fn char_range_never_splits_a_char() {
        let text = "a😀b";
        assert_eq!(char_range(text, (2, 3)), (1, 5));
        assert_eq!(char_range(text, (9, 12)), (6, 6));
    }
}
