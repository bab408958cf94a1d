//! ImageNet class names and the sample photos that ship with Kestrel.

/// The 1000 ImageNet class names, in index order.
pub fn class_names() -> Vec<&'static str> {
    include_str!("../assets/imagenet_classes.txt")
        .lines()
        .collect()
}

/// Sample photos (CC0, scikit-image sample data) with their ImageNet label, for the demo.
pub const SAMPLES: &[(&str, &[u8], &str)] = &[
    (
        "chelsea.png",
        include_bytes!("../assets/chelsea.png"),
        "Egyptian cat",
    ),
    (
        "coffee.png",
        include_bytes!("../assets/coffee.png"),
        "espresso",
    ),
];

#[cfg(test)]
mod tests {
    #[test]
    fn thousand_classes() {
        let names = super::class_names();
        assert_eq!(names.len(), 1000);
        assert_eq!(names[285], "Egyptian cat");
        assert_eq!(names[967], "espresso");
    }
}
