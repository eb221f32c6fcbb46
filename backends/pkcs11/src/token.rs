//! Finding the configured token among the module's slots.

use std::path::Path;

use cryptoki::{context::Pkcs11, slot::Slot};
use sbtc_custody::{BackendKind, Error, ErrorKind, Operation};

use crate::errors::describe;

/// How the config names the token.
#[derive(Clone, Debug)]
pub(crate) struct TokenSelector {
    pub label: Option<String>,
    pub serial: Option<String>,
}

impl TokenSelector {
    fn matches(&self, label: &str, serial: &str) -> bool {
        self.label.as_deref().is_none_or(|l| l == label)
            && self.serial.as_deref().is_none_or(|s| s == serial)
    }

    pub fn describe(&self) -> String {
        match (&self.label, &self.serial) {
            (Some(l), Some(s)) => format!("label '{l}' and serial '{s}'"),
            (Some(l), None) => format!("label '{l}'"),
            (None, Some(s)) => format!("serial '{s}'"),
            (None, None) => "any label".to_owned(),
        }
    }
}

/// The slot holding the selected token. If no token matches, the error lists every token found
/// (slot, label, serial) so the operator can fix the config.
pub(crate) fn find_slot(
    ctx: &Pkcs11,
    module: &Path,
    selector: &TokenSelector,
    op: Operation,
) -> Result<Slot, Error> {
    let slots = ctx.get_slots_with_token().map_err(|e| {
        Error::new(BackendKind::Pkcs11, op, ErrorKind::Device).detail(format!(
            "cannot list the slots of {}: {}",
            module.display(),
            describe(&e)
        ))
    })?;
    let mut found = Vec::new();
    let mut matching = Vec::new();
    for slot in slots {
        match ctx.get_token_info(slot) {
            Ok(info) if info.token_initialized() => {
                let (label, serial) = (info.label().trim(), info.serial_number().trim());
                if selector.matches(label, serial) {
                    matching.push(slot);
                }
                found.push(format!("slot {slot}: label '{label}', serial '{serial}'"));
            }
            Ok(_) => found.push(format!("slot {slot}: uninitialised token")),
            Err(e) => found.push(format!("slot {slot}: {}", describe(&e))),
        }
    }
    match matching.as_slice() {
        [slot] => Ok(*slot),
        [] => {
            let listing = if found.is_empty() {
                "no tokens at all (is the device connected and the module configured?)".to_owned()
            } else {
                format!("tokens found: {}", found.join("; "))
            };
            Err(
                Error::new(BackendKind::Pkcs11, op, ErrorKind::TokenNotFound).detail(format!(
                    "no initialised token with {} in {}; {listing}",
                    selector.describe(),
                    module.display()
                )),
            )
        }
        many => Err(Error::new(BackendKind::Pkcs11, op, ErrorKind::Config)
            .detail(format!(
                "{} tokens match {} in {}: {}",
                many.len(),
                selector.describe(),
                module.display(),
                found.join("; ")
            ))
            .hint("set token_serial (and token_label) in [custody.pkcs11] to pick one token")),
    }
}
