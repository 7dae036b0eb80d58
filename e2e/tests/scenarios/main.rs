//! The end-to-end scenarios, run against the environment `e2e/env.sh up` starts (a real control
//! plane, KWOK nodes, a registry, git servers, the operator installed by its Helm chart and run
//! with the chart ServiceAccount's token). `e2e/run.sh` brings it up and runs them.
//!
//! Each module groups the scenarios of one concern; each test states the behaviour it proves.

mod build;
mod election;
mod faults;
mod follow;
mod gitops;
mod guardrails;
mod hostile;
mod karpenter;
mod lifecycle;
mod nodes;
mod quota;
mod release;
mod secrets;
mod source;
mod supply_chain;
