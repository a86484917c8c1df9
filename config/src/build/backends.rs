//! A port's `backends:`: addresses and weights, each checked, none listed twice.

use crate::file::BackendFile;
use crate::lenient::Lenient;
use crate::model::Backend;
use crate::problems::{FieldPath, Problems};

use super::settings::MAX_WEIGHT;
use super::{parse_socket_addr, take};

pub(super) fn build_backends(
    items: Vec<Lenient<BackendFile>>,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<Vec<Backend>> {
    let mut backends: Vec<Backend> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.into_iter().enumerate() {
        let item_path = path.index(i);
        let Some(item) = take(Some(item), &item_path, p) else {
            ok = false;
            continue;
        };
        let (address, weight, address_path) = match item {
            BackendFile::Address(text) => (
                parse_socket_addr(&text, &item_path, p),
                1,
                item_path.clone(),
            ),
            BackendFile::Detailed(detail) => {
                let address_path = item_path.field("address");
                let address = match detail.address {
                    Some(text) => parse_socket_addr(&text, &address_path, p),
                    None => {
                        p.push(&address_path, "required");
                        None
                    }
                };
                (address, detail.weight.unwrap_or(1), address_path)
            }
            BackendFile::Resolved(backend) => (
                Some(backend.address),
                backend.weight,
                item_path.field("address"),
            ),
        };
        if weight > MAX_WEIGHT {
            p.push(
                &item_path.field("weight"),
                format!("{weight} is out of range 0..={MAX_WEIGHT}"),
            );
            ok = false;
        }
        let Some(address) = address else {
            ok = false;
            continue;
        };
        if let Some(first) = backends.iter().position(|b| b.address == address) {
            p.push(
                &address_path,
                format!("duplicate backend {address} (also backends[{first}])"),
            );
            ok = false;
            continue;
        }
        backends.push(Backend { address, weight });
    }
    ok.then_some(backends)
}
