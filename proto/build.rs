//! Compiles proto/pagewire/v1/*.proto with a vendored protoc (no system protoc needed).
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .bytes(".pagewire.v1")
        .file_descriptor_set_path(out.join("pagewire_descriptor.bin"))
        .compile_protos(&["pagewire/v1/pagewire.proto"], &["."])?;
    println!("cargo:rerun-if-changed=pagewire/v1/pagewire.proto");
    Ok(())
}
