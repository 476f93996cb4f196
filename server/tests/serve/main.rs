//! `kiln serve` end to end: servers on 127.0.0.1:0 over the real default
//! model (skipped when it is missing), answering real HTTP clients. Most
//! tests share one CPU server; those that change settings or hold the
//! worker start their own. One test binary, so CI links once.

mod batch;
mod common;
mod gpu;
mod limits;
mod lora;
mod ollama;
mod openai;
mod python;
