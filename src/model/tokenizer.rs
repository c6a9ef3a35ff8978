//! Tokenization with byte offsets, on the `tokenizers` crate.
//!
//! The padding and truncation settings stored inside a model's `tokenizer.json` are switched
//! off here: the default model's file pads every input to 128 tokens and would silently cut
//! long text. Length limits are ours to enforce, with a clear error.

use std::path::Path;

use tokenizers::Tokenizer;

/// One tokenized text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoding {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// The token strings as the tokenizer names them (`[CLS]`, `##ing`, `Ġthe`).
    pub tokens: Vec<String>,
    /// UTF-8 byte offsets `(start, end)` into the text; `(0, 0)` for special tokens.
    pub offsets: Vec<(usize, usize)>,
    /// True for tokens the tokenizer added (`[CLS]`, `[SEP]`, `<s>`, `</s>`).
    pub special: Vec<bool>,
    /// Whether the text was cut to fit `max_len`.
    pub truncated: bool,
}

impl Encoding {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("text is {tokens} tokens long, over the maximum of {max}; shorten it or set truncate = true")]
    TooLong { tokens: usize, max: usize },
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
}

/// A tokenizer bound to one model: knows its special tokens and its maximum length.
#[derive(Clone)]
pub struct TextEncoder {
    tokenizer: Tokenizer,
    max_len: usize,
    pad_id: u32,
    mask_id: Option<u32>,
    unk_id: Option<u32>,
}

impl TextEncoder {
    /// Loads `tokenizer.json` and switches its padding and truncation off.
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self, String> {
        let mut tokenizer =
            Tokenizer::from_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| format!("{}: cannot disable truncation: {e}", path.display()))?;
        let find = |names: &[&str]| names.iter().find_map(|n| tokenizer.token_to_id(n));
        let pad_id = find(&["[PAD]", "<pad>"]).unwrap_or(0);
        let mask_id = find(&["[MASK]", "<mask>"]);
        let unk_id = find(&["[UNK]", "<unk>"]);
        Ok(Self {
            tokenizer,
            max_len,
            pad_id,
            mask_id,
            unk_id,
        })
    }

    /// The same tokenizer with a lower maximum length (a server's `limits.max_input_tokens`),
    /// so that every text it encodes, perturbed and edited texts included, meets that limit.
    /// A maximum above the current one is ignored: the model cannot take more.
    pub fn with_max_len(mut self, max_len: usize) -> Self {
        self.max_len = self.max_len.min(max_len);
        self
    }

    /// The maximum length in tokens, special tokens included: the model's, or the lower limit
    /// given to [`TextEncoder::with_max_len`].
    pub fn max_len(&self) -> usize {
        self.max_len
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn mask_id(&self) -> Option<u32> {
        self.mask_id
    }
    pub fn unk_id(&self) -> Option<u32> {
        self.unk_id
    }
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// Tokenizes `text` with special tokens. Over-long text is an error unless `truncate`,
    /// in which case the content is cut and the closing special token kept.
    pub fn encode(&self, text: &str, truncate: bool) -> Result<Encoding, TokenizeError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?;
        let mut out = Encoding {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            tokens: enc.get_tokens().to_vec(),
            offsets: enc.get_offsets().to_vec(),
            special: enc
                .get_special_tokens_mask()
                .iter()
                .map(|&m| m == 1)
                .collect(),
            truncated: false,
        };
        for (i, s) in out.special.iter().enumerate() {
            if *s {
                out.offsets[i] = (0, 0);
            }
        }
        if out.len() > self.max_len {
            if !truncate {
                return Err(TokenizeError::TooLong {
                    tokens: out.len(),
                    max: self.max_len,
                });
            }
            // Keep the leading specials and the trailing special token(s); cut the content.
            let tail = out.special.iter().rev().take_while(|s| **s).count();
            let keep_head = self.max_len - tail;
            cut(&mut out.ids, keep_head, tail);
            cut(&mut out.type_ids, keep_head, tail);
            cut(&mut out.tokens, keep_head, tail);
            cut(&mut out.offsets, keep_head, tail);
            cut(&mut out.special, keep_head, tail);
            out.truncated = true;
        }
        Ok(out)
    }
}

/// Keeps the first `head` items and the last `tail` items of `v`.
fn cut<T>(v: &mut Vec<T>, head: usize, tail: usize) {
    let t: Vec<T> = v.drain(v.len() - tail..).collect();
    v.truncate(head);
    v.extend(t);
}
