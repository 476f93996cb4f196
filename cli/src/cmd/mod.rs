pub mod chat;
pub mod devices;
pub mod info;
pub mod logits;
pub mod perplexity;
pub mod run;
pub mod tokenize;
