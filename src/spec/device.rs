//! Where a job trains: the `device` field and what it names.

/// A parsed `device` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

pub const DEFAULT_DEVICE: &str = "auto";

pub fn parse_device(s: &str) -> Option<DeviceChoice> {
    match s {
        "auto" => Some(DeviceChoice::Auto),
        "cpu" => Some(DeviceChoice::Cpu),
        "cuda" => Some(DeviceChoice::Cuda(0)),
        _ => s.strip_prefix("cuda:")?.parse().ok().map(DeviceChoice::Cuda),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!(parse_device("cuda:3"), Some(DeviceChoice::Cuda(3)));
        assert_eq!(parse_device("gpu"), None);
        assert_eq!(parse_device("cuda:x"), None);
    }
}
