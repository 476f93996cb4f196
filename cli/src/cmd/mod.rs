pub mod devices;
pub mod info;
pub mod logits;
pub mod run;
pub mod tokenize;
