//! An explanation as lines for a person: what `gantry explain` prints without `--json`.

/// An explanation as lines for a person (what `gantry explain` prints).
pub fn explain_text(answer: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    let mut out = format!(
        "{}/{} for client {}\n",
        text(&answer["service"]),
        text(&answer["port"]),
        text(&answer["client"])
    );
    match answer["backend"].as_str() {
        Some(backend) => {
            out += &format!(
                "-> backend {backend}, decided by {}\n",
                text(&answer["decided_by"])
            )
        }
        None if answer["source_range"] == "refused" => {
            out += "-> refused: the client is outside the port's source ranges\n";
            return out;
        }
        None => out += "-> no backend: the port has none to give (503)\n",
    }
    let affinity = &answer["affinity"];
    if affinity.is_object() {
        out += &format!("affinity {}:", text(&affinity["policy"]));
        if affinity["quarantined"] == true {
            out += " quarantined, nothing sticks;";
        }
        out += &format!(" sticks by {}", text(&affinity["sticks_by"]));
        if let Some(key) = affinity["key"].as_str() {
            out += &format!(" (key {key})");
        }
        if let Some(table) = affinity["table"].as_str() {
            out += &format!("; table {table}");
        }
        if let Some(backend) = affinity["sticky_backend"].as_str() {
            out += &format!(" -> {backend}");
        }
        if let Some(outcome) = affinity["outcome"].as_str() {
            out += &format!("; {outcome}");
        }
        if let Some(why) = affinity["moved_because"].as_str() {
            out += &format!(" (its backend is {})", why.replace('_', " "));
        }
        out += "\n";
    }
    let balancer = &answer["balancer"];
    if balancer.is_object() {
        out += &format!("balancer {}:", text(&balancer["policy"]));
        if balancer["quarantined"] == true {
            out += " quarantined, the native round-robin answers;";
        }
        for pick in balancer["picks"].as_array().into_iter().flatten() {
            let backend = pick["backend"].as_str().unwrap_or("no answer");
            out += &format!(" attempt {} -> {backend}", text(&pick["attempt"]));
            if pick["fallback"] == true {
                out += " (the plugin faulted: native round-robin)";
            }
            if let Some(why) = pick["unusable"].as_str() {
                out += &format!(" (skipped: {})", why.replace('_', " "));
            }
            out += ";";
        }
        if let Some(scan) = balancer["scan"].as_str() {
            out += &format!(" then the scan took a backend ({})", scan.replace('_', " "));
        }
        out += "\n";
    }
    out += "backends:\n";
    for backend in answer["backends"].as_array().into_iter().flatten() {
        out += &format!(
            "  {} weight {} {} in_flight {} latency {}us",
            text(&backend["address"]),
            text(&backend["weight"]),
            if backend["healthy"] == true {
                "healthy"
            } else {
                "unhealthy"
            },
            text(&backend["in_flight"]),
            text(&backend["latency_micros"]),
        );
        let held_out: Vec<String> = (backend["held_out_by"].as_array().into_iter().flatten())
            .map(text)
            .collect();
        if !held_out.is_empty() {
            out += &format!(" held out by {}", held_out.join(", "));
        }
        if backend["ejected_ms"].as_u64().is_some_and(|ms| ms > 0) {
            out += &format!(" ejected for {}ms", text(&backend["ejected_ms"]));
        }
        if backend["backing_off_ms"].as_u64().is_some_and(|ms| ms > 0) {
            out += &format!(" backing off {}ms", text(&backend["backing_off_ms"]));
        }
        if let Some(why) = backend["unusable"].as_str() {
            out += &format!(" [{}]", why.replace('_', " "));
        }
        out += "\n";
    }
    out
}
