//! Conformance suite: every [`LogStore`](crate::LogStore) and [`KvStore`](crate::KvStore)
//! implementation runs these checks (`storage-disk` calls them from its tests).
