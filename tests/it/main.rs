//! Integration tests: one binary, so real servers and builds are shared.

mod anchors;
mod audit;
mod common;
mod fencing;
mod handover;
mod hardening;
mod lab;
mod lab_smoke;
mod log_store;
mod replay;
mod service;
mod source_389;
mod source_ad;
mod source_bad_input;
mod source_openldap;
mod source_props;
mod source_tls;
mod sync_ad;
mod sync_export;
mod sync_graph;
mod sync_openldap;
mod target_graph;
mod target_scim;
mod target_scim_differ;
