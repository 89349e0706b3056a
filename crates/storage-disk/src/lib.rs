//! storage-disk (under construction).
