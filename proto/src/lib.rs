//! The gRPC contract (`videocall.v1`): generated messages, client and server, and the file
//! descriptor set that server reflection serves.

#![allow(clippy::all)]

/// Generated code of package `videocall.v1`.
pub mod v1 {
    tonic::include_proto!("videocall.v1");
}

/// Encoded `FileDescriptorSet` of every file in `proto/`, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/videocall_descriptor.bin"));
