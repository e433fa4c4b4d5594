
v2.4.2gen