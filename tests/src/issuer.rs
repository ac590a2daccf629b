//! The local OIDC issuer and HUD stand-ins live in `crcr_standin`
//! (the demo uses them too); re-exported here for the tests.

pub use crcr_standin::issuer::{Hud, Issuer};
