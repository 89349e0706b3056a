//! Generated protobuf code: etcd's v3 API (with the lock and election services) and Concord's
//! peer protocol. Nothing else lives here; conversions to domain types are in `api`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The etcd data model messages.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's users, roles and permissions.
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// The etcd v3 client API.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// Concord's peer protocol.
pub mod peer {
    tonic::include_proto!("concord.peer");
}
