//! Token counting with tiktoken: the encoding by model family, and the conservative margin
//! for models whose tokenizer is not public (Anthropic, unknown names).

use tiktoken_rs::{CoreBPE, cl100k_base_singleton, o200k_base_singleton};

fn bpe_for(model: &str) -> (&'static CoreBPE, bool) {
    let m = model.to_ascii_lowercase();
    let o200k = [
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
        "chatgpt-4o",
    ];
    if o200k.iter().any(|p| m.starts_with(p)) {
        return (o200k_base_singleton(), true);
    }
    let cl100k = ["gpt-4", "gpt-3.5", "text-embedding", "davinci", "babbage"];
    (
        cl100k_base_singleton(),
        cl100k.iter().any(|p| m.starts_with(p)),
    )
}

/// Exact count for OpenAI models; for others the cl100k count (callers add a margin).
pub(crate) fn count(model: &str, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    bpe_for(model).0.encode_ordinary(text).len() as u64
}

/// Is the tokenizer of this model known exactly?
pub(crate) fn exact(model: &str) -> bool {
    bpe_for(model).1
}
