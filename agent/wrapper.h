/*
 * Input to bindgen for the `lzc` feature (see build.rs): libzfs_core, the
 * stable ioctl-level API of OpenZFS, and libnvpair for its arguments.
 * libzfs itself is deliberately not bound: its ABI changes between releases.
 */
#include <libzfs_core.h>
#include <libnvpair.h>
