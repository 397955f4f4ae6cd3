//! Where db threads run: the check of a pin list at open (both backends)
//! and the pin at a db thread's start.

use crate::OpenError;

/// Refuses an empty pin list or a core id this machine does not have.
pub(crate) fn check_pin_to(pin_to: Option<&[usize]>) -> Result<(), OpenError> {
    if let Some(cores) = pin_to {
        if cores.is_empty() {
            return Err(OpenError::Config(
                "pin_to is empty (use None not to pin)".to_string(),
            ));
        }
        let known: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        if let Some(bad) = cores.iter().find(|c| !known.contains(c)) {
            return Err(OpenError::Config(format!(
                "pin_to names core {bad}, not one of this machine's cores {known:?}"
            )));
        }
    }
    Ok(())
}

/// Pins the calling db thread to `core` when one is given; a failure is
/// logged and the thread runs unpinned.
pub(crate) fn pin_db_thread(core: Option<usize>) {
    if let Some(id) = core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            log::warn!("storage: could not pin this db thread to core {id}; running unpinned");
        }
    }
}
