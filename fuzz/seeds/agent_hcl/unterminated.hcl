providers {
  name = "p"
  models {
