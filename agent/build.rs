//! Generates the libzfs_core / libnvpair bindings for the `lzc` feature. With
//! the feature off this does nothing, so the default build needs neither the
//! OpenZFS headers nor libclang.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "lzc")]
    lzc::generate();
}

#[cfg(feature = "lzc")]
mod lzc {
    use std::env;
    use std::path::PathBuf;
    use std::process::Command;

    /// Where Debian's libzfslinux-dev puts the headers, for hosts without pkg-config.
    const DEFAULT_INCLUDES: [&str; 2] = ["/usr/include/libzfs", "/usr/include/libspl"];

    pub fn generate() {
        println!("cargo:rerun-if-changed=wrapper.h");
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
        let includes = pkg_config_includes()
            .unwrap_or_else(|| DEFAULT_INCLUDES.iter().map(PathBuf::from).collect());
        if !includes.iter().any(|d| d.join("libzfs_core.h").exists()) {
            panic!(
                "feature lzc: libzfs_core.h not found in {includes:?}; \
                 install libzfslinux-dev (and libclang-dev for bindgen)"
            );
        }

        let mut builder = bindgen::Builder::default()
            .header("wrapper.h")
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
            .allowlist_function("lzc_.*")
            .allowlist_function("libzfs_core_.*")
            .allowlist_function("fnvlist_.*")
            .allowlist_function("nvlist_.*")
            .allowlist_function("nvpair_.*")
            // OpenZFS's own errnos (ZFS_ERR_STREAM_TRUNCATED, ...).
            .allowlist_type("zfs_errno_t")
            // Printing and regex matching would drag in FILE and regex_t.
            .blocklist_function("nvlist_print.*|nvlist_prt.*|nvpair_value_match.*|dump_nvlist")
            // Types reached from the remaining functions come along.
            .allowlist_recursively(true)
            .layout_tests(false)
            .derive_debug(false)
            .generate_comments(false)
            .formatter(bindgen::Formatter::None);
        for dir in &includes {
            builder = builder.clang_arg(format!("-I{}", dir.display()));
        }
        let bindings = builder
            .generate()
            .expect("bindgen could not parse libzfs_core.h (is libclang-dev installed?)");
        let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("lzc_bindings.rs");
        bindings
            .write_to_file(&out)
            .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));

        if let Some(dirs) = pkg_config(&["--libs-only-L", "libzfs_core"]) {
            for dir in dirs {
                if let Some(d) = dir.strip_prefix("-L") {
                    println!("cargo:rustc-link-search=native={d}");
                }
            }
        }
        println!("cargo:rustc-link-lib=dylib=zfs_core");
        println!("cargo:rustc-link-lib=dylib=nvpair");
    }

    fn pkg_config(args: &[&str]) -> Option<Vec<String>> {
        let out = Command::new("pkg-config").args(args).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8(out.stdout).ok()?;
        Some(text.split_whitespace().map(str::to_string).collect())
    }

    fn pkg_config_includes() -> Option<Vec<PathBuf>> {
        let flags = pkg_config(&["--cflags-only-I", "libzfs_core"])?;
        let dirs: Vec<PathBuf> = flags
            .iter()
            .filter_map(|f| f.strip_prefix("-I"))
            .map(PathBuf::from)
            .collect();
        (!dirs.is_empty()).then_some(dirs)
    }
}
