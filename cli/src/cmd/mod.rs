pub mod devices;
pub mod info;
pub mod run;
pub mod tokenize;
