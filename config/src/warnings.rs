//! What a valid configuration may still get wrong, said without refusing it: `gantry check`
//! prints each warning, and a running Gantry logs each when it starts and each new one at a
//! reload.

use crate::model::{Model, PolicySource};

/// One warning: the field it is about and what to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// Where: `admin.open`, or `web/http affinity.params.secure`.
    pub field: String,
    /// What happens, and what to do about it.
    pub message: String,
}

impl Model {
    /// Every warning about this configuration, admin endpoint first, then ports in name order.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut out: Vec<Warning> = self
            .admin
            .warning()
            .map(|(field, message)| Warning {
                field: field.to_owned(),
                message,
            })
            .into_iter()
            .collect();
        for port in self.ports() {
            let Some(affinity) = &port.affinity else {
                continue;
            };
            let cookie =
                matches!(&affinity.policy, PolicySource::Builtin(name) if name == "cookie");
            let param = |name: &str| {
                affinity
                    .params
                    .iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.as_str())
            };
            if cookie && param("same_site") == Some("none") && param("secure") == Some("false") {
                out.push(Warning {
                    field: format!("{} affinity.params.secure", port.key),
                    message: "browsers refuse a cookie with SameSite=None that is not Secure: \
                              the cookie is sent with Secure anyway (drop `secure: false`, or \
                              choose same_site lax or strict)"
                        .to_owned(),
                });
            }
        }
        out
    }
}
